"""The ground floor: errors, registry, strict config base and logging. Imports nothing of lmforge."""
