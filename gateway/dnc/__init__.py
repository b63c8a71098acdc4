"""DNC lists and consumer opt-outs: the API, the bulk importer and the inbound keyword hook."""
