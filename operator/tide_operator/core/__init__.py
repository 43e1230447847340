"""The pure scaling core: the policy that turns queue observations into a replica count.

Nothing here does I/O or reads a clock (time is an argument), so the operator, local mode
and the simulator run exactly the same decisions. It imports nothing else of the package.
"""
