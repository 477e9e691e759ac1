"""Running the same jobs on many machines: a pool of Ray actors, each keeping one engine warm.

Ray is optional (this project's `cluster` extra); nothing here imports it until a run asks for it.
"""
