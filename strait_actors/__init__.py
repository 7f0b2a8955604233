"""strait: a job orchestrator on PostgreSQL, built as a supervised pykka actor system."""

__version__ = "0.1.0"
