"""Distributed tuning (docs/distributed.md): :mod:`.roles` (light: config, roles, done marker),
:mod:`.worker` (trial loop with heartbeats) and :mod:`.chief` (oracle server with leases)."""
