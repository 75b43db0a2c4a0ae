"""Tracing's ``log_spans`` passes spans still being recorded (``LiveSpan``, whose ``from_dict``
refuses to rebuild one): they travel as the immutable ``Span`` with the same content. (Before,
every ``log_spans`` call through ``tracker://`` failed in the daemon, silently for the user.)"""

from __future__ import annotations

from mlflow.entities.span import LiveSpan, Span
from opentelemetry.sdk.trace import TracerProvider

from tracker_client.mlflow.entities import decode_value, encode_value


def test_a_live_span_arrives_as_the_span_it_became() -> None:
    otel = TracerProvider().get_tracer("test").start_span("step")
    live = LiveSpan(otel, "tr-0123456789abcdef0123456789abcdef")
    live.set_inputs({"x": 1})
    live.set_outputs(2)
    otel.end()
    (back,) = decode_value(encode_value([live]))
    assert type(back) is Span
    assert back.to_dict() == live.to_dict()
    assert (back.name, back.inputs, back.outputs) == ("step", {"x": 1}, 2)
