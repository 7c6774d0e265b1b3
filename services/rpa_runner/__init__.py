"""The RPA runner: durable business workflows behind the conversation (docs/workflows.md)."""
