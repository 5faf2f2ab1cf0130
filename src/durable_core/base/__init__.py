"""Layer 0 (pure): values and rules that know nothing of runs.

Errors, durations, serialization, backoff, events, CEL conditions, cron schedules.
"""
