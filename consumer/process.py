"""One record through the middle of the pipeline: decode, then map (which normalizes and validates).

The run loop and replay's dry run both call `process_record`, so a dry run shows exactly what the
service would do with a record.
"""

from __future__ import annotations

from dataclasses import dataclass

from consumer.decode import Decoder
from consumer.errors import ErrorClass, Failure, PipelineError, Stage
from consumer.mapping import Filtered, Mapped, Mapper, Rejected


@dataclass(frozen=True, slots=True)
class Undecodable:
    failure: Failure


Processed = Mapped | Filtered | Rejected | Undecodable


def process_record(decoder: Decoder, mapper: Mapper, topic: str, value: bytes | None) -> Processed:
    """Decode `value` with `topic`'s schemas and map it with `topic`'s mapping."""
    try:
        # Timestamps, dates and decimals left raw where the mapping can read them so (cheaper).
        record, raw_logical = decoder.decode_lean(topic, value)
    except PipelineError as exc:
        return Undecodable(exc.failure)
    return mapper.map(topic, record, raw_logical=raw_logical)


def rejection_failure(result: Rejected) -> Failure:
    """The dead-letter description of a record the mapping or validation refused."""
    return Failure(Stage(result.stage), result.reason, ErrorClass.PERMANENT, result.detail)
