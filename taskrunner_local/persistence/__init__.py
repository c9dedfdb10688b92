"""The local stack's durable state: one SQLite database in the state folder, written through before any call
is acknowledged, from which a restarted stack restores moto's backends, task logs and archive objects."""
