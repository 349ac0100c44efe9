"""The backends: the schedule printed for each target, and the generated module.

module.py           the module's source, from templates/module.py.j2; Plan (which
                    cascade and which schedule each backend runs)
templates.py        the template's environment, and its compiled form the package
                    ships (module_template.py, generated: `python -m
                    einsumattn.backends.templates` after editing the template)
torch_reference.py  the torch reference: one block of torch per Einsum
triton_unfused.py   Triton, one kernel per Einsum
triton_fused.py     Triton, one fused kernel per cascade (or per stage): the attention
                    schedule, else the loop schedule, lowered in schedule/ and printed
triton_kernel.py    what the fused Triton kernels share (the kernel record, arguments,
                    launch; `printed`: a lowered schedule to a kernel and its launch)
triton_printer.py   IR expressions as Triton blocks, and the helpers every module defines
printers.py         IR expressions as Python / torch source
names.py            the spec's names in generated code: a namespace of their own
"""
