"""capi-consumer: Kafka order and subscription events to Meta's Conversions API."""

__version__ = "0.1.0"
