"""Asterisk: the AMI connection, call tracking from AMI events, and the SIP trunk channel pools."""
