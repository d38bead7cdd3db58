"""The shared service kit: what every bizmsg service needs once, and nothing service-specific.

- errors / validation: domain exceptions and how they become google.rpc.Status on the wire
- auth: principals and signed bearer tokens
- clock / ids / timeutil: movable time, time-ordered ids, proto time conversion
- config: settings from environment variables
- storage / idempotency: SQLAlchemy set-up, migrations, group commit, request_id replay
- sqlite_inline / prepared: SQLite on the event loop's thread; hot statements run on the driver
- server / interceptors / clients: the grpc.aio process, its interceptors and outgoing channels
- loop: the event loop a service runs on (uvloop where installed)
- multiplex: per-message internal calls as items on one long-lived bidirectional stream
- testing: in-process and real-process harnesses for tests
"""
