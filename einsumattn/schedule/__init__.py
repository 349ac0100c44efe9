"""The schedule: the decisions between the IR and every emitter (which kernels, where a
cascade is cut, the proved bounds of the loops over key tiles, when a masked tile may be
skipped). It reads the IR, the analyses and the rewrites' algebra; it prints nothing.

stages.py    where a cascade is cut into fused kernels (NotFusable, Crossing)
bounds.py    affine filters read as bounds on the keys a row sees
skipping.py  the proof that a fully masked step changes nothing carried
attention.py, loops.py, unfused.py   the decisions of each schedule, as a KernelSchedule
kernel_ir.py the kernel-level IR every schedule lowers to, for every target's printer
lowering.py  the unfused and loop schedules lowered to it (LoweredKernel)
lower_attention.py  the attention schedule lowered to it
"""
