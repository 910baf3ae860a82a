"""The applications behind the CLI: each module composes the library for one job family."""
