"""Delivery: getting records from a log call to the daemon, or to disk while there is none.

Owns the session (sans-I/O), the outbox, the transport (the one I/O thread and its DEALER
socket), the spill to the offline spool, the spool and its import, and artifact staging. May use
wire/ and the public surface's errors and run constants; never mlflow/.
"""
