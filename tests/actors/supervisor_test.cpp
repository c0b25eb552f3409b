// Tests for actors/supervisor.
