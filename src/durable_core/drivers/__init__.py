"""Layer 4: drivers that turn the engine's commands into I/O.

The trio worker, the background-thread worker, the client, worker processes.
"""
