"""Real Apache Kafka, Apicurio Registry and the CAPI emulator on 127.0.0.1 for tests, demo and bench."""

from capi_devstack.artifacts import DevStackError
from capi_devstack.stack import DevStack, Endpoints, StackOptions

__all__ = ["DevStack", "DevStackError", "Endpoints", "StackOptions"]
