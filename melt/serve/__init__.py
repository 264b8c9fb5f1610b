"""`melt serve`: an OTLP/HTTP receiver, continuous detection over its stored segments, SQLite state, a REST API and the incident page (docs/serve.md)."""
