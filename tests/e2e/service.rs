//! outboxd as a service: signals, reload, readiness.
