"""``tracker_client.protocol``: the wire protocol's one namespace (``from tracker_client import
protocol as p``), used by the client's delivery and MLflow modules, the daemon and third parties.

The definitions live in :mod:`tracker_client.wire`: the messages, records and constants in
:mod:`~tracker_client.wire.messages`, encoding and strict, bounded decoding in
:mod:`~tracker_client.wire.codec`. This module re-exports both (their ``__all__``), so a name added
there is here too. ``client/PROTOCOL.md`` is the language-neutral specification.
"""

from __future__ import annotations

from .wire import codec as _codec
from .wire import messages as _messages
from .wire.codec import *  # noqa: F403
from .wire.messages import *  # noqa: F403

__all__ = [*_messages.__all__, *_codec.__all__]
