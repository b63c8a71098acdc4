"""Voice calls: the API, the call record and its status machine (http · service · schemas · repo · states)."""
