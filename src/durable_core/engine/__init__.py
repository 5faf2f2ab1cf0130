"""Layer 3 (no I/O of its own; calls only the store it is given).

Routing, cron, leases, the plan: the one loop every driver shares.
"""
