"""The wire: what goes between a client and the daemon, pure (no sockets, no threads, no files).

Owns the protocol's messages and codec, the spool/journal framing, decode bounds, CURVE keys and
daemon addresses, and the client-side validation of values. May use the standard library and
msgpack only (zmq only for reading CURVE certificates, lazily); never delivery/ or mlflow/.
"""
