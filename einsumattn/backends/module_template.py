# einsumattn template key: 1a800a6a9fb411fb501fd0a56d1e3224105c7333a0931f0d72a3040c88ab667c
# jinja2's compiled form of templates/module.py.j2, written by `python -m einsumattn.backends.templates` (see backends/templates.py). Do not edit.
from jinja2.runtime import LoopContext, Macro, Markup, Namespace, TemplateNotFound, TemplateReference, TemplateRuntimeError, Undefined, escape, identity, internalcode, markup_join, missing, str_join
name = 'module.py.j2'

def root(context, missing=missing):
    resolve = context.resolve_or_missing
    undefined = environment.undefined
    concat = environment.concat
    cond_expr_undefined = Undefined
    if 0: yield None
    l_0_has_triton = resolve('has_triton')
    l_0_class_name = resolve('class_name')
    l_0_function_name = resolve('function_name')
    l_0_merge = resolve('merge')
    l_0_spec_hash = resolve('spec_hash')
    l_0_version = resolve('version')
    l_0_inputs = resolve('inputs')
    l_0_outputs = resolve('outputs')
    l_0_input_ranks = resolve('input_ranks')
    l_0_params = resolve('params')
    l_0_compile_options = resolve('compile_options')
    l_0_triton_fallback = resolve('triton_fallback')
    l_0_schedule = resolve('schedule')
    l_0_main = resolve('main')
    l_0_backend_choices = resolve('backend_choices')
    l_0_torch_schedule = resolve('torch_schedule')
    l_0_args = resolve('args')
    l_0_body_lines = resolve('body_lines')
    l_0_tuning = resolve('tuning')
    l_0_dot_rounding = resolve('dot_rounding')
    l_0_helpers = resolve('helpers')
    l_0_kernel_sources = resolve('kernel_sources')
    l_0_fused_source = resolve('fused_source')
    l_0_training = resolve('training')
    l_0_fused_tuning = resolve('fused_tuning')
    l_0_config_rules = resolve('config_rules')
    l_0_config_candidates = resolve('config_candidates')
    l_0_training_prologue = resolve('training_prologue')
    l_0_fused_host = resolve('fused_host')
    l_0_host_lines = resolve('host_lines')
    l_0_ops = resolve('ops')
    l_0_public_args = resolve('public_args')
    l_0_keyword_params = resolve('keyword_params')
    l_0_overrides = resolve('overrides')
    l_0_name = resolve('name')
    l_0_class_params = resolve('class_params')
    l_0_class_overrides = resolve('class_overrides')
    l_0_function_params = resolve('function_params')
    l_0_doc = l_0_bind_function = l_0_binding = l_0_torch_prologue = missing
    try:
        t_1 = environment.filters['block']
    except KeyError:
        @internalcode
        def t_1(*unused):
            raise TemplateRuntimeError("No filter named 'block' found.")
    try:
        t_2 = environment.filters['docstring']
    except KeyError:
        @internalcode
        def t_2(*unused):
            raise TemplateRuntimeError("No filter named 'docstring' found.")
    try:
        t_3 = environment.filters['ident']
    except KeyError:
        @internalcode
        def t_3(*unused):
            raise TemplateRuntimeError("No filter named 'ident' found.")
    try:
        t_4 = environment.filters['indent']
    except KeyError:
        @internalcode
        def t_4(*unused):
            raise TemplateRuntimeError("No filter named 'indent' found.")
    try:
        t_5 = environment.filters['join']
    except KeyError:
        @internalcode
        def t_5(*unused):
            raise TemplateRuntimeError("No filter named 'join' found.")
    try:
        t_6 = environment.filters['literal']
    except KeyError:
        @internalcode
        def t_6(*unused):
            raise TemplateRuntimeError("No filter named 'literal' found.")
    try:
        t_7 = environment.filters['pprint']
    except KeyError:
        @internalcode
        def t_7(*unused):
            raise TemplateRuntimeError("No filter named 'pprint' found.")
    try:
        t_8 = environment.filters['size']
    except KeyError:
        @internalcode
        def t_8(*unused):
            raise TemplateRuntimeError("No filter named 'size' found.")
    pass
    l_1_source_name = resolve('source_name')
    l_1_module_name = resolve('module_name')
    l_1_spec_source = resolve('spec_source')
    l_1_analysis = resolve('analysis')
    l_1_backends_note = resolve('backends_note')
    t_9 = []
    pass
    t_9.extend((
        str((undefined(name='class_name') if l_0_class_name is missing else l_0_class_name)),
        ': the `',
        str((undefined(name='name') if l_0_name is missing else l_0_name)),
        '` attention variant, compiled by einsumattn ',
        str((undefined(name='version') if l_0_version is missing else l_0_version)),
        '.\n\nGenerated from ',
        str((undefined(name='source_name') if l_1_source_name is missing else l_1_source_name)),
        '. Edit the spec and recompile rather than this file.\nThis module needs only torch',
    ))
    if (undefined(name='has_triton') if l_0_has_triton is missing else l_0_has_triton):
        pass
        t_9.append(
            '; it also imports triton when that is installed, for\nthe Triton backends, and works without it on the torch backend',
        )
    t_9.extend((
        '.\n\n    from ',
        str((undefined(name='module_name') if l_1_module_name is missing else l_1_module_name)),
        ' import ',
        str((undefined(name='class_name') if l_0_class_name is missing else l_0_class_name)),
        '\n    layer = ',
        str((undefined(name='class_name') if l_0_class_name is missing else l_0_class_name)),
        '(backend="torch"',
    ))
    for l_2_p in (undefined(name='params') if l_0_params is missing else l_0_params):
        l_2_public = resolve('public')
        _loop_vars = {}
        pass
        t_9.extend((
            ', ',
            str(environment.getitem((undefined(name='public') if l_2_public is missing else l_2_public), l_2_p)),
            '=...',
        ))
    l_2_p = l_2_public = missing
    t_9.extend((
        ')\n    ',
        str(t_5(context.eval_ctx, (undefined(name='outputs') if l_0_outputs is missing else l_0_outputs), ', ')),
        ' = layer(',
        str(t_5(context.eval_ctx, (undefined(name='inputs') if l_0_inputs is missing else l_0_inputs), ', ')),
        ')\n\nSpec:\n\n',
        str(t_1((undefined(name='spec_source') if l_1_spec_source is missing else l_1_spec_source))),
        '\n\nAnalysis:\n\n',
        str(t_1((undefined(name='analysis') if l_1_analysis is missing else l_1_analysis))),
        '\n\nBackends:\n\n',
        str(t_1((undefined(name='backends_note') if l_1_backends_note is missing else l_1_backends_note))),
        '\n',
        str(t_1(environment.getattr((undefined(name='torch_schedule') if l_0_torch_schedule is missing else l_0_torch_schedule), 'note'))),
        '\n',
    ))
    l_0_doc = (Markup if context.eval_ctx.autoescape else identity)(concat(t_9))
    context.vars['doc'] = l_0_doc
    context.exported_vars.add('doc')
    l_1_source_name = l_1_module_name = l_1_spec_source = l_1_analysis = l_1_backends_note = missing
    yield str(t_2((undefined(name='doc') if l_0_doc is missing else l_0_doc)))
    yield '\n\nfrom __future__ import annotations\n\nimport math\nimport os\nimport time\nimport warnings\n\nimport torch\n'
    if (undefined(name='has_triton') if l_0_has_triton is missing else l_0_has_triton):
        pass
        yield '\ntry:  # the Triton backend needs triton; the torch backend does not\n    import triton\n    import triton.language as tl\nexcept ImportError:  # pragma: no cover - depends on the installation\n    triton = tl = None\ntry:\n    from triton.tools.tensor_descriptor import TensorDescriptor\nexcept ImportError:  # pragma: no cover - a Triton without host TMA descriptors\n    TensorDescriptor = None\n'
    yield '\n__all__ = ['
    yield str(t_6((undefined(name='class_name') if l_0_class_name is missing else l_0_class_name)))
    yield ', '
    yield str(t_6((undefined(name='function_name') if l_0_function_name is missing else l_0_function_name)))
    yield ', "reference"'
    if ((undefined(name='merge') if l_0_merge is missing else l_0_merge) and (not environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'refused'))):
        pass
        yield ', "partial", "merge", "finish"'
        if environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'lse'):
            pass
            yield ', "log_sum_exp"'
    yield ']\n\nSPEC_SHA256 = "'
    yield str((undefined(name='spec_hash') if l_0_spec_hash is missing else l_0_spec_hash))
    yield '"\nEINSUMATTN_VERSION = '
    yield str(t_6((undefined(name='version') if l_0_version is missing else l_0_version)))
    yield '\nINPUTS = ('
    for l_1_i in (undefined(name='inputs') if l_0_inputs is missing else l_0_inputs):
        _loop_vars = {}
        pass
        yield str(t_6(l_1_i))
        yield ', '
    l_1_i = missing
    yield ')\nOUTPUTS = ('
    for l_1_o in (undefined(name='outputs') if l_0_outputs is missing else l_0_outputs):
        _loop_vars = {}
        pass
        yield str(t_6(l_1_o))
        yield ', '
    l_1_o = missing
    yield ")\n# Each input's ranks, in order (what its dimensions mean).\nINPUT_RANKS = "
    yield str(t_7((undefined(name='input_ranks') if l_0_input_ranks is missing else l_0_input_ranks)))
    yield '\nPARAMS = ('
    for l_1_p in (undefined(name='params') if l_0_params is missing else l_0_params):
        _loop_vars = {}
        pass
        yield str(t_6(l_1_p))
        yield ', '
    l_1_p = missing
    yield ')\n# The options it was compiled with.\nCOMPILE_OPTIONS = '
    yield str(t_7((undefined(name='compile_options') if l_0_compile_options is missing else l_0_compile_options)))
    yield '\n# Why the Triton backend is not used for this spec (None when it is).\nTRITON_FALLBACK = '
    yield str(t_7((undefined(name='triton_fallback') if l_0_triton_fallback is missing else l_0_triton_fallback)))
    yield '\n# Each backend -> None where it runs this spec, else why not (the torch backend runs).\nBACKENDS = '
    yield str(t_7(environment.getattr((undefined(name='schedule') if l_0_schedule is missing else l_0_schedule), 'backends')))
    yield '\n# What the kernels compute and how, as data: the kernels\' cascade (.attn text), and per\n# fused kernel its grid, loops, ranks held on chip, each tensor\'s role and layout, the\n# passes (what each accumulates and recomputes, the proved bounds of its key loop), the\n# masks at its stores and its knobs. SCHEDULE["describe"] says it in words. `einsumattn\n# check`, the benchmarks and the tests read it instead of rebuilding it.\nSCHEDULE = '
    yield str(t_7((undefined(name='schedule') if l_0_schedule is missing else l_0_schedule)))
    yield '\n\n_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)\n_INT_DTYPES = (torch.int32, torch.int64)\n\n\ndef _take(sizes: dict, origin: dict, name: str, tensor, ranks: tuple, computed=()) -> None:\n    """Bind the sizes of `ranks` from one input\'s shape, or say what does not fit.\n    `computed`: ranks sized by other dims (`dims P = M`), never bound from an input:\n    `_bind` checks their extents once their sizes are computed."""\n    if not isinstance(tensor, torch.Tensor):\n        raise TypeError(f"input {name} must be a torch.Tensor, got {type(tensor).__name__}")\n    if tensor.dtype not in _FLOAT_DTYPES + _INT_DTYPES:\n        raise TypeError(f"input {name} has dtype {tensor.dtype}; use float16, bfloat16, "\n                        f"float32 (or int32/int64 for ids)")\n    if tensor.dim() != len(ranks):\n        raise ValueError(f"input {name} must have {len(ranks)} dimension(s) "\n                         f"({\', \'.join(ranks) or \'a scalar\'}), got shape {tuple(tensor.shape)}")\n    for position, (rank, size) in enumerate(zip(ranks, tensor.shape)):\n        if rank in computed:\n            continue\n        if rank in sizes and sizes[rank] != size:\n            raise ValueError(f"input {name}: dimension {position} is rank {rank}, expected "\n                             f"{sizes[rank]} (from {origin[rank]}), got {size}")\n        if size < 1:\n            raise ValueError(f"input {name}: dimension {position} (rank {rank}) is empty")\n        sizes[rank] = size\n        origin.setdefault(rank, f"input {name}")\n\n\n'
    def macro(l_1_piece):
        t_10 = []
        if l_1_piece is missing:
            l_1_piece = undefined("parameter 'piece' was not provided", name='piece')
        pass
        t_10.extend((
            'def ',
            str(environment.getattr(l_1_piece, 'bind')),
            '(',
            str(environment.getattr(l_1_piece, 'args')),
            ', overrides: dict) -> tuple[dict, dict]:\n    """Rank sizes from the inputs\' shapes, and the params\' values."""\n    sizes = {',
        ))
        l_2_loop = missing
        for (l_2_r, l_2_size), l_2_loop in LoopContext(context.call(environment.getattr(environment.getattr(l_1_piece, 'fixed'), 'items')), undefined):
            _loop_vars = {}
            pass
            t_10.extend((
                str(t_6(l_2_r)),
                ': ',
                str(l_2_size),
            ))
            if (not environment.getattr(l_2_loop, 'last')):
                pass
                t_10.append(
                    ', ',
                )
        l_2_loop = l_2_r = l_2_size = missing
        t_10.append(
            '}\n    origin = {',
        )
        l_2_loop = missing
        for l_2_r, l_2_loop in LoopContext(environment.getattr(l_1_piece, 'fixed'), undefined):
            _loop_vars = {}
            pass
            t_10.extend((
                str(t_6(l_2_r)),
                ': "its fixed size in the spec"',
            ))
            if (not environment.getattr(l_2_loop, 'last')):
                pass
                t_10.append(
                    ', ',
                )
        l_2_loop = l_2_r = missing
        t_10.append(
            '}\n',
        )
        for l_2_line in environment.getattr(l_1_piece, 'bind_lines'):
            _loop_vars = {}
            pass
            t_10.extend((
                '    ',
                str(l_2_line),
                '\n',
            ))
        l_2_line = missing
        t_10.append(
            '    return sizes, params\n',
        )
        return concat(t_10)
    context.exported_vars.add('bind_function')
    context.vars['bind_function'] = l_0_bind_function = Macro(environment, macro, 'bind_function', ('piece',), False, False, False, context.eval_ctx.autoescape)
    yield str(context.call((undefined(name='bind_function') if l_0_bind_function is missing else l_0_bind_function), (undefined(name='main') if l_0_main is missing else l_0_main)))
    yield '\n\ndef _check_params(overrides: dict) -> dict:\n    unknown = sorted(set(overrides) - set(PARAMS))\n    if unknown:\n        raise TypeError(f"unknown param {unknown[0]!r}; the params are {\', \'.join(PARAMS) or \'none\'}")\n    return {k: v for k, v in overrides.items() if v is not None}\n\n\ndef _outwards(value, rounding):\n    """A loop bound\'s offset computed from params, a whole number rounded outwards\n    (`rounding`: "floor" for a first key, "ceil" for a last), so a loop visits more key\n    tiles, never fewer. An infinite or NaN param (a window of W = inf keys) gives a\n    bound past every index: the loop visits every tile and the masks decide."""\n    if math.isnan(value):\n        return -2**62 if rounding == "floor" else 2**62\n    if math.isinf(value):\n        return 2**62 if value > 0 else -2**62\n    return max(-2**62, min(2**62, math.floor(value) if rounding == "floor" else math.ceil(value)))\n\n\ndef _backend(backend: str) -> str:\n    """The backend a call runs: `backend`, or torch (with a warning) where the Triton\n    backend cannot express the spec."""\n    if backend not in BACKENDS:\n        raise ValueError(f"backend must be '
    yield str((undefined(name='backend_choices') if l_0_backend_choices is missing else l_0_backend_choices))
    yield ', got {backend!r}")\n    if BACKENDS[backend] is not None:\n        warnings.warn(f"'
    yield str((undefined(name='class_name') if l_0_class_name is missing else l_0_class_name))
    yield ': the Triton backend is not available for this spec "\n                      f"({BACKENDS[backend]}); using the torch backend", stacklevel=3)\n        return "torch"\n    return backend\n\n\ndef _forward(backend: str, overrides: dict, *inputs):\n    """Run `backend` on the inputs (in declaration order) with checked params: under\n    torch.compile as the module\'s custom ops (OPS), else directly."""\n    if OPS is not None and _compiling() and all(\n            isinstance(overrides.get(p), (int, float, type(None))) for p in PARAMS):\n        return _as_op(backend, overrides, inputs)\n    return _run(backend, overrides, *inputs)\n\n\ndef _run(backend: str, overrides: dict, *inputs):\n    """Run `backend` on the inputs, eagerly."""\n'
    if (undefined(name='has_triton') if l_0_has_triton is missing else l_0_has_triton):
        pass
        yield '    if backend.startswith("triton"):\n        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):\n            return _TritonTrained.apply(overrides, backend == "triton", *inputs)\n        return _triton_forward(*inputs, overrides, fused=backend == "triton")\n'
    if environment.getattr((undefined(name='torch_schedule') if l_0_torch_schedule is missing else l_0_torch_schedule), 'lines'):
        pass
        yield '    if backend == "torch":\n        return _scheduled(*inputs, overrides)\n'
    yield '    return _reference(*inputs, overrides)\n\n\n'
    def macro(l_1_rank_values, l_1_as_float, l_1_piece):
        t_11 = []
        if l_1_rank_values is missing:
            l_1_rank_values = undefined("parameter 'rank_values' was not provided", name='rank_values')
        if l_1_as_float is missing:
            l_1_as_float = undefined("parameter 'as_float' was not provided", name='as_float')
        if l_1_piece is missing:
            l_1_piece = undefined("parameter 'piece' was not provided", name='piece')
        pass
        t_11.extend((
            '    sizes, params = ',
            str(environment.getattr(l_1_piece, 'bind')),
            '(',
            str(environment.getattr(l_1_piece, 'args')),
            ', overrides)\n',
        ))
        for (l_2_rank, l_2_value) in l_1_rank_values:
            _loop_vars = {}
            pass
            t_11.extend((
                '    ',
                str(t_8(l_2_rank)),
                ' = ',
                str(l_2_value),
                '\n',
            ))
        l_2_rank = l_2_value = missing
        for l_2_p in environment.getattr(l_1_piece, 'params'):
            _loop_vars = {}
            pass
            t_11.extend((
                '    ',
                str(t_3(l_2_p)),
                ' = ',
            ))
            if l_1_as_float:
                pass
                t_11.extend((
                    'float(params[',
                    str(t_6(l_2_p)),
                    '])',
                ))
            else:
                pass
                t_11.extend((
                    'params[',
                    str(t_6(l_2_p)),
                    ']',
                ))
            t_11.append(
                '\n',
            )
        l_2_p = missing
        t_11.extend((
            '    device = ',
            str(t_3(environment.getattr(l_1_piece, 'first_input'))),
            '.device\n    out_dtype = next((t.dtype for t in (',
            str(environment.getattr(l_1_piece, 'args')),
            ',) if t.is_floating_point()), torch.float32)\n',
        ))
        return concat(t_11)
    context.exported_vars.add('binding')
    context.vars['binding'] = l_0_binding = Macro(environment, macro, 'binding', ('rank_values', 'as_float', 'piece'), False, False, False, context.eval_ctx.autoescape)
    def macro(l_1_piece):
        t_12 = []
        if l_1_piece is missing:
            l_1_piece = undefined("parameter 'piece' was not provided", name='piece')
        pass
        t_12.extend((
            str(context.call((undefined(name='binding') if l_0_binding is missing else l_0_binding), environment.getattr(l_1_piece, 'rank_sizes'), False, l_1_piece)),
            '\n    def _full(value, shape, dtype=torch.float32):\n        return torch.as_tensor(value, device=device).to(dtype).expand(shape)\n\n    def _f32(value):\n        return torch.as_tensor(value, device=device).to(torch.float32)\n\n    def _grad_only(mask, value):\n        # `value` passing gradients only where `mask` holds (docs/codegen.md, Gradients).\n        if not (torch.is_grad_enabled() and value.requires_grad):\n            return value\n        return torch.where(mask, value, value.detach())\n\n    # Everything is computed in float32 (integer ids compare exactly below 2**24).\n',
        ))
        for l_2_name in environment.getattr(l_1_piece, 'inputs'):
            _loop_vars = {}
            pass
            t_12.extend((
                '    ',
                str(t_3(l_2_name)),
                ' = ',
                str(t_3(l_2_name)),
                '.to(torch.float32)\n',
            ))
        l_2_name = missing
        return concat(t_12)
    context.exported_vars.add('torch_prologue')
    context.vars['torch_prologue'] = l_0_torch_prologue = Macro(environment, macro, 'torch_prologue', ('piece',), False, False, False, context.eval_ctx.autoescape)
    yield '\ndef _reference('
    yield str((undefined(name='args') if l_0_args is missing else l_0_args))
    yield ', overrides: dict):\n    """The reference backend: the cascade as plain torch code, one block per Einsum.\n    Intermediates in float32; outputs in the dtype of the first floating input."""\n'
    yield str(context.call((undefined(name='torch_prologue') if l_0_torch_prologue is missing else l_0_torch_prologue), (undefined(name='main') if l_0_main is missing else l_0_main)))
    for l_1_line in (undefined(name='body_lines') if l_0_body_lines is missing else l_0_body_lines):
        _loop_vars = {}
        pass
        if l_1_line:
            pass
            yield '    '
            yield str(l_1_line)
        yield '\n'
    l_1_line = missing
    yield '\n    return '
    l_1_loop = missing
    for l_1_o, l_1_loop in LoopContext((undefined(name='outputs') if l_0_outputs is missing else l_0_outputs), undefined):
        l_1_absent = resolve('absent')
        _loop_vars = {}
        pass
        if (l_1_o in (undefined(name='absent') if l_1_absent is missing else l_1_absent)):
            pass
            yield 'torch.where('
            yield str(t_3(l_1_o))
            yield '_ok, '
            yield str(t_3(l_1_o))
            yield ', 0.0).to(out_dtype)'
        else:
            pass
            yield str(t_3(l_1_o))
            yield '.to(out_dtype)'
        if (not environment.getattr(l_1_loop, 'last')):
            pass
            yield ', '
    l_1_loop = l_1_o = l_1_absent = missing
    yield '\n\n\n# ---------------------------------------------------------------- the scheduled torch backend\n\n# Why backend="torch" runs the reference for this spec (None when it runs the schedule).\nTORCH_FALLBACK = '
    yield str(t_7(environment.getattr((undefined(name='torch_schedule') if l_0_torch_schedule is missing else l_0_torch_schedule), 'fallback')))
    yield '\n# Rows per block and keys per tile of the scheduled torch backend: the place to tune.\nTORCH_TUNING = '
    yield str(t_7(environment.getattr((undefined(name='torch_schedule') if l_0_torch_schedule is missing else l_0_torch_schedule), 'tuning')))
    yield '\n'
    if environment.getattr((undefined(name='torch_schedule') if l_0_torch_schedule is missing else l_0_torch_schedule), 'lines'):
        pass
        yield '\n\ndef _scheduled('
        yield str((undefined(name='args') if l_0_args is missing else l_0_args))
        yield ', overrides: dict):\n    """The scheduled torch backend: the fused kernel\'s schedule as torch code, a loop\n    over row blocks and key tiles with the online state held as tensors; memory does not\n    grow with the number of keys. Outputs in the dtype of the first floating input."""\n'
        yield str(context.call((undefined(name='torch_prologue') if l_0_torch_prologue is missing else l_0_torch_prologue), (undefined(name='main') if l_0_main is missing else l_0_main)))
        for l_1_line in environment.getattr((undefined(name='torch_schedule') if l_0_torch_schedule is missing else l_0_torch_schedule), 'lines'):
            _loop_vars = {}
            pass
            if l_1_line:
                pass
                yield '    '
                yield str(l_1_line)
            yield '\n'
        l_1_line = missing
        yield '\n    return '
        l_1_loop = missing
        for l_1_o, l_1_loop in LoopContext((undefined(name='outputs') if l_0_outputs is missing else l_0_outputs), undefined):
            _loop_vars = {}
            pass
            yield str(t_3(l_1_o))
            yield '.to(out_dtype)'
            if (not environment.getattr(l_1_loop, 'last')):
                pass
                yield ', '
        l_1_loop = l_1_o = missing
        yield '\n\n'
    yield '\n\n'
    if (undefined(name='has_triton') if l_0_has_triton is missing else l_0_has_triton):
        pass
        yield '\n# ---------------------------------------------------------------- the Triton backend\n\n# Block sizes per kernel: the one place to tune (or to hand to triton.autotune).\nTUNING = '
        yield str(t_7((undefined(name='tuning') if l_0_tuning is missing else l_0_tuning)))
        yield "\n# Einsums whose tl.dot operands include computed values (count per Einsum): with float16\n# or bfloat16 inputs those are rounded to the inputs' precision. `einsumattn check`\n# widens its tolerance by the first-order effect of exactly these roundings.\nDOT_ROUNDING = "
        yield str(t_7((undefined(name='dot_rounding') if l_0_dot_rounding is missing else l_0_dot_rounding)))
        yield '\n\n\ndef _dot_dtype(*inputs):\n    """The precision of tl.dot operands: float16 or bfloat16 when every floating input\n    has that dtype (tensor cores: exact products, float32 sums), else float32 (IEEE)."""\n    dtypes = {t.dtype for t in inputs if t.is_floating_point()}\n    if dtypes == {torch.float16}:\n        return tl.float16\n    if dtypes == {torch.bfloat16}:\n        return tl.bfloat16\n    return tl.float32\n\n\ndef _buffer_dot(dot_dtype):\n    """The precision of a kernel whose dots read an earlier stage\'s float32 buffer (a\n    sum over keys, such as linear attention\'s K^T V): float16 tiles of it could overflow\n    (above 65504: inf), so float32; bfloat16 has float32\'s range."""\n    return tl.float32 if dot_dtype == tl.float16 else dot_dtype\n\nif triton is not None:\n'
        yield str(t_4((undefined(name='helpers') if l_0_helpers is missing else l_0_helpers), 4, first=True))
        yield '\n\n'
        for l_1_source in (undefined(name='kernel_sources') if l_0_kernel_sources is missing else l_0_kernel_sources):
            _loop_vars = {}
            pass
            yield str(t_4(l_1_source, 4, first=True))
            yield '\n\n'
        l_1_source = missing
        if (undefined(name='fused_source') if l_0_fused_source is missing else l_0_fused_source):
            pass
            yield '    # The fused schedule: one kernel for the whole cascade.\n'
            yield str(t_4((undefined(name='fused_source') if l_0_fused_source is missing else l_0_fused_source), 4, first=True))
            yield '\n'
            if (undefined(name='training') if l_0_training is missing else l_0_training):
                pass
                yield '\n    # The training kernels (compile --train; SCHEDULE["training"]): the forward that also\n    # writes what the backward reads, then the backward\'s stages, derived from the spec\n    # (einsumattn grad --fast prints the backward they compute).\n'
                yield str(t_4(environment.getattr((undefined(name='training') if l_0_training is missing else l_0_training), 'source'), 4, first=True))
                yield '\n'
            yield "\n\n# The fused kernels' knobs: a number pins it; None leaves it to the configuration chosen\n# per call (_tuning below). num_warps / num_stages may be added to pin Triton's launch options.\nTUNING_FUSED = "
            yield str(t_7((undefined(name='fused_tuning') if l_0_fused_tuning is missing else l_0_fused_tuning)))
            yield '\n\n# Configurations per call (einsumattn/schedule/configs.py says where each comes from): the\n# first rule matching the device ("interpreter", or "cuda" with a compute capability of\n# at least `capability`, 90 for Hopper), the inputs\' dtype and the head dim (the largest\n# held tile); a tile never exceeds the sequence\'s own (a power of two, at least 16 for a\n# dot); a rule\'s None keeps the knob\'s default (SCHEDULE).\nCONFIG_RULES = '
            yield str(t_7((undefined(name='config_rules') if l_0_config_rules is missing else l_0_config_rules)))
            yield '\n# None: the inputs\' device decides; ("cuda", 90): choose as on that GPU (a static report\n# of the H100\'s code made without one: benchmarks/sm90_static.py).\nCONFIG_TARGET = None\n# True (or EINSUMATTN_AUTOTUNE=1): time CONFIG_CANDIDATES on the first call of each shape\n# and keep the fastest (per process, in _CONFIGS) instead of taking the rule.\nAUTOTUNE = False\nCONFIG_CANDIDATES = '
            yield str(t_7((undefined(name='config_candidates') if l_0_config_candidates is missing else l_0_config_candidates)))
            yield '\n_CONFIGS = {}\n\n\ndef _pow2_at_least(n, least):\n    """The smallest power of two >= n and >= least (plain arithmetic: a host call costs\n    microseconds, not a JIT-wrapped helper\'s)."""\n    return max(least, 1 << max(0, int(n) - 1).bit_length())\n\n\ndef _target(device):\n    if CONFIG_TARGET is not None:\n        return tuple(CONFIG_TARGET)\n    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":\n        return ("interpreter", 0)\n    major, minor = torch.cuda.get_device_capability(device)\n    return ("cuda", major * 10 + minor)\n\n\ndef _splits(pinned, programs, keys, key_tile, device, stored):\n    """Programs per row tile along the keys for a kernel that only sums them (SCHEDULE\'s\n    "splits": linear attention\'s K^T V, sigmoid attention), each adding its keys\' sums\n    into float32 zeros: one for outputs stored in 16 bits (atomic adds need float32);\n    else the pinned number (TUNING_FUSED), else enough for two programs per\n    multiprocessor, each at least 4 key tiles, and one in the interpreter and under\n    torch\'s deterministic algorithms (float32 atomic adds in any order: the last bits of\n    the sums vary from run to run)."""\n    if stored != torch.float32:\n        return 1\n    if pinned:\n        return pinned\n    if _target(device)[0] == "interpreter" or torch.are_deterministic_algorithms_enabled():\n        return 1\n    units = torch.cuda.get_device_properties(device).multi_processor_count \\\n        if device.type == "cuda" else 132         # CONFIG_TARGET on the CPU: an H100\'s\n    return max(1, min(-(-2 * units // programs), keys // (4 * key_tile)))\n\n\ndef _kv_splits(pinned, programs, steps, device):\n    """Programs per row tile along the keys for a split kernel with a split-KV form (a\n    partial kernel per range of steps, a merge kernel; schedule/split_kv.py): the pinned\n    number (TUNING_FUSED), at most one per step; else one in the interpreter and where\n    the row tiles already give every multiprocessor a program (a long sequence of\n    queries); else, for a decoding call\'s few row tiles, enough for two programs per\n    multiprocessor, each at least 4 steps (key tiles) long."""\n    if pinned:\n        return max(1, min(int(pinned), steps))\n    if _target(device)[0] == "interpreter":\n        return 1\n    units = torch.cuda.get_device_properties(device).multi_processor_count \\\n        if device.type == "cuda" else 132         # CONFIG_TARGET on the CPU: an H100\'s\n    if programs >= units:\n        return 1\n    return max(1, min(-(-2 * units // programs), steps // 4))\n\n\ndef _tma_suits(device, *reads):\n    """Whether the GPU\'s tensor memory accelerator reads these (tensor, block) pairs\n    (the kernels\' TMA loads): Hopper or later (or Triton\'s interpreter, which emulates\n    it); each tensor\'s start and every stride but the last a multiple of 16 bytes and\n    not 0, the last stride 1; blocks of powers of two up to 256 (else the kernel reads\n    through pointers, and checks its knobs itself)."""\n    target = _target(device)\n    if TensorDescriptor is None or not (target[0] == "interpreter" or target[1] >= 90):\n        return False\n    for t, block in reads:\n        size = t.element_size()\n        if t.data_ptr() % 16 or t.stride(-1) != 1 or \\\n                any(s == 0 or s * size % 16 for s in t.stride()[:-1]) or \\\n                any(b < 1 or b > 256 or b & (b - 1) for b in block):\n            return False\n    return True\n\n\ndef _descriptor(use, tensor, block):\n    """A TMA descriptor of `tensor` read in blocks of `block` (where `use`), else None."""\n    if not use:\n        return None\n    return TensorDescriptor(tensor, list(tensor.shape), list(tensor.stride()), block)\n\n\ndef _tuning(kernel, rows, keys, head_dim, dtype, device, launch):\n    """The configuration of `kernel` for this call, cached per shape class: the pinned\n    knobs of TUNING_FUSED, then the rule\'s (or, autotuning, the fastest candidate\'s)."""\n    pinned = TUNING_FUSED[kernel]\n    target = _target(device)\n    dtype = str(dtype).removeprefix("torch.")\n    autotune = AUTOTUNE or os.environ.get("EINSUMATTN_AUTOTUNE") == "1"\n    key = (kernel, target, dtype, head_dim, _pow2_at_least(rows, 1), _pow2_at_least(keys, 1),\n           tuple(sorted(pinned.items())), autotune)\n    if key not in _CONFIGS:\n        schedule = next(k for k in (*SCHEDULE["kernels"],\n                                    *SCHEDULE["training"].get("kernels", ()))\n                        if k["name"] == kernel)\n        if autotune:\n            _CONFIGS[key] = _fastest(schedule, pinned, rows, keys, device, launch)\n        else:\n            rule = next(r for r in CONFIG_RULES if r["device"] == target[0]\n                        and target[1] >= r["capability"] and dtype in r["dtypes"]\n                        and head_dim <= r["head_dim"] and schedule["dots"] >= r["dots"])\n            _CONFIGS[key] = _config(schedule, pinned, rows, keys, rule)\n    return dict(_CONFIGS[key])\n\n\ndef _config(schedule, pinned, rows, keys, choice):\n    """`choice` (a rule or a candidate: rows, keys, warps, stages) under the pinned knobs,\n    its tiles capped at the sequence\'s own."""\n    least = 16 if schedule["uses_dot"] else 1\n    row_knob, key_knob = schedule["grid"]["row_tile"], schedule["loops"][0]["tile"]\n    config = {knob: value for knob, value in pinned.items() if value is not None}\n    for knob, want, size in ((row_knob, choice["rows"], rows), (key_knob, choice["keys"], keys)):\n        if knob not in config:\n            want = want or schedule["knobs"][knob]["default"]\n            config[knob] = min(want, _pow2_at_least(size, least))\n    for option, value in (("num_warps", choice["warps"]), ("num_stages", choice["stages"])):\n        if value and option not in config:\n            config[option] = value\n    return config\n\n\ndef _fastest(schedule, pinned, rows, keys, device, launch):\n    """The candidate configuration `launch` runs fastest (each distinct one once; those\n    a kernel refuses are skipped)."""\n    timings = {}\n    for candidate in CONFIG_CANDIDATES:\n        config = _config(schedule, pinned, rows, keys, candidate)\n        frozen = tuple(sorted(config.items()))\n        if frozen in timings:\n            continue\n        try:\n            timings[frozen] = _time(lambda: launch(config), device)\n        except Exception:            # a configuration the kernel or the GPU cannot take\n            continue\n    if not timings:\n        raise RuntimeError(f"autotuning {schedule[\'name\']}: no candidate configuration ran")\n    return dict(min(timings, key=timings.get))\n\n\ndef _time(run, device):\n    """Milliseconds per call: Triton\'s do_bench on a GPU, a median of a few calls else."""\n    if device.type == "cuda":\n        import triton.testing\n        return triton.testing.do_bench(run, warmup=5, rep=20)\n    run()\n    samples = []\n    for repeat in range(3):\n        start = time.perf_counter()\n        run()\n        samples.append(time.perf_counter() - start)\n    return sorted(samples)[1] * 1e3\n'
        yield '\n\n'
    yield '\ndef _replayed_grads(backend: str, overrides: dict, inputs, needs, cotangents):\n    """The inputs\' gradients by autograd through `backend` run again on the inputs\n    (None where `needs` says none is wanted or no output depends on the input)."""\n    leaves = [t.detach().requires_grad_(need) for t, need in zip(inputs, needs)]\n    with torch.enable_grad():\n        outputs = _run(backend, overrides, *leaves)\n    outputs = outputs if isinstance(outputs, tuple) else (outputs,)\n    used = [(o, c) for o, c in zip(outputs, cotangents) if c is not None and o.requires_grad]\n    wanted = [t for t in leaves if t.requires_grad]\n    grads = iter(torch.autograd.grad([o for o, c in used], wanted, [c for o, c in used],\n                                     allow_unused=True) if used else [None] * len(wanted))\n    return tuple(next(grads) if t.requires_grad else None for t in leaves)\n'
    if (undefined(name='has_triton') if l_0_has_triton is missing else l_0_has_triton):
        pass
        yield '\n\nclass _TritonTrained(torch.autograd.Function):\n    """The Triton backends under autograd.\n'
        if (undefined(name='training') if l_0_training is missing else l_0_training):
            pass
            yield '    With the fused schedule (backend="triton") the kernels train: the forward runs the\n    kernels that also write what the backward reads (_triton_saving: O(N), nothing the\n    size of the scores) and saves the inputs and those; the backward runs the backward\'s\n    kernels, which recompute '
            yield str((environment.getattr((undefined(name='training') if l_0_training is missing else l_0_training), 'recomputed') or 'nothing'))
            yield ' per tile (docs/gradients.md,\n    "The fast backward"). Otherwise (backend="triton-unfused") the forward saves the\n    inputs and the backward\n'
        else:
            pass
            yield '    The forward runs the kernels and saves the inputs; the backward\n'
        yield '    computes the torch backend again from the saved inputs and differentiates that\n    (its memory is the torch backend\'s, for one call)."""\n\n    @staticmethod\n    def forward(ctx, overrides, fused, *inputs):\n        ctx.overrides = overrides\n'
        if (undefined(name='training') if l_0_training is missing else l_0_training):
            pass
            yield '        ctx.kernels = fused\n        if fused:\n            outputs, saved = _triton_saving(*inputs, overrides)\n            ctx.save_for_backward(*inputs, *saved)\n            return outputs if len(outputs) > 1 else outputs[0]\n'
        yield '        ctx.save_for_backward(*inputs)\n        return _triton_forward(*inputs, overrides, fused=fused)\n\n    @staticmethod\n    def backward(ctx, *cotangents):\n'
        if (undefined(name='training') if l_0_training is missing else l_0_training):
            pass
            yield '        if ctx.kernels:\n            inputs = ctx.saved_tensors[:len(INPUTS)]\n            grads = _triton_backward(*inputs, ctx.saved_tensors[len(INPUTS):], cotangents,\n                                     ctx.overrides)\n            return (None, None, *(g.to(t.dtype) if g is not None and need else None\n                                  for g, t, need in zip(grads, inputs,\n                                                        ctx.needs_input_grad[2:])))\n'
        yield '        return (None, None, *_replayed_grads("torch", ctx.overrides, ctx.saved_tensors,\n                                             ctx.needs_input_grad[2:], cotangents))\n\n\n'
        if (undefined(name='training') if l_0_training is missing else l_0_training):
            pass
            yield '\n'
            def macro():
                t_13 = []
                pass
                t_13.extend((
                    str(context.call((undefined(name='binding') if l_0_binding is missing else l_0_binding), environment.getattr((undefined(name='training') if l_0_training is missing else l_0_training), 'ranks'), True, (undefined(name='main') if l_0_main is missing else l_0_main))),
                    '    dot_dtype = _dot_dtype(',
                    str((undefined(name='args') if l_0_args is missing else l_0_args)),
                    ')\n    stored_dtype = torch.float32   # what the backward reads stays float32\n',
                ))
                return concat(t_13)
            context.exported_vars.add('training_prologue')
            context.vars['training_prologue'] = l_0_training_prologue = Macro(environment, macro, 'training_prologue', (), False, False, False, context.eval_ctx.autoescape)
            yield '\ndef _triton_saving('
            yield str((undefined(name='args') if l_0_args is missing else l_0_args))
            yield ', overrides: dict):\n    """The training forward: the fused kernels that compute the outputs and what the\n    backward reads, kept in float32. Returns (the outputs in the inputs\' dtype, saved):\n'
            t_14 = 1
            for l_1_line in environment.getattr((undefined(name='training') if l_0_training is missing else l_0_training), 'saved_lines'):
                _loop_vars = {}
                pass
                yield '    '
                yield str(l_1_line)
                yield '\n'
                t_14 = 0
            l_1_line = missing
            if t_14:
                pass
                yield '    nothing\n'
            yield '    """\n'
            yield str(context.call((undefined(name='training_prologue') if l_0_training_prologue is missing else l_0_training_prologue)))
            for l_1_line in environment.getattr((undefined(name='training') if l_0_training is missing else l_0_training), 'forward_host'):
                _loop_vars = {}
                pass
                if l_1_line:
                    pass
                    yield '    '
                    yield str(l_1_line)
                yield '\n'
            l_1_line = missing
            yield '    return ('
            for l_1_o in (undefined(name='outputs') if l_0_outputs is missing else l_0_outputs):
                _loop_vars = {}
                pass
                yield str(t_3(l_1_o))
                yield '.to(out_dtype), '
            l_1_o = missing
            yield '), ('
            for l_1_name in environment.getattr((undefined(name='training') if l_0_training is missing else l_0_training), 'saved'):
                _loop_vars = {}
                pass
                yield str(t_3(l_1_name))
                yield ', '
            l_1_name = missing
            yield ')\n\n\ndef _triton_backward('
            yield str((undefined(name='args') if l_0_args is missing else l_0_args))
            yield ', saved, cotangents, overrides: dict):\n    """The backward\'s kernels, stage by stage (SCHEDULE["training"]["stages"]), from the\n    inputs, what _triton_saving saved and the outputs\' cotangents. Returns\n    each input\'s gradient (None where no output depends on it through a value)."""\n'
            yield str(context.call((undefined(name='training_prologue') if l_0_training_prologue is missing else l_0_training_prologue)))
            if environment.getattr((undefined(name='training') if l_0_training is missing else l_0_training), 'saved'):
                pass
                yield '    '
                for l_1_name in environment.getattr((undefined(name='training') if l_0_training is missing else l_0_training), 'saved'):
                    _loop_vars = {}
                    pass
                    yield str(t_3(l_1_name))
                    yield ', '
                l_1_name = missing
                yield '= saved\n'
            yield "    # autograd materialises an unused output's cotangent as zeros (never None here)\n    "
            for l_1_name in environment.getattr((undefined(name='training') if l_0_training is missing else l_0_training), 'cotangents'):
                _loop_vars = {}
                pass
                yield str(t_3(l_1_name))
                yield ', '
            l_1_name = missing
            yield '= cotangents\n'
            for l_1_line in environment.getattr((undefined(name='training') if l_0_training is missing else l_0_training), 'backward_host'):
                _loop_vars = {}
                pass
                if l_1_line:
                    pass
                    yield '    '
                    yield str(l_1_line)
                yield '\n'
            l_1_line = missing
            yield '    return ('
            for l_1_g in environment.getattr((undefined(name='training') if l_0_training is missing else l_0_training), 'gradients'):
                _loop_vars = {}
                pass
                if l_1_g:
                    pass
                    yield str(t_3(l_1_g))
                else:
                    pass
                    yield 'None'
                yield ', '
            l_1_g = missing
            yield ')\n\n'
        yield '\ndef _triton_forward('
        yield str((undefined(name='args') if l_0_args is missing else l_0_args))
        yield ', overrides: dict, fused: bool = True):\n    """The Triton backend: the fused kernel when there is one (fused=True), else one\n    kernel launch per Einsum, in dataflow order."""\n    if triton is None:\n        raise RuntimeError("the Triton backend needs the triton package; use backend=\'torch\'")\n    if not '
        yield str(t_3(environment.getattr((undefined(name='main') if l_0_main is missing else l_0_main), 'first_input')))
        yield '.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":\n        raise RuntimeError("the Triton backend runs on CUDA tensors (or on the CPU in Triton\'s "\n                           "interpreter: set TRITON_INTERPRET=1 before importing triton); "\n                           "use backend=\'torch\' on the CPU")\n'
        yield str(context.call((undefined(name='binding') if l_0_binding is missing else l_0_binding), environment.getattr((undefined(name='main') if l_0_main is missing else l_0_main), 'rank_sizes'), True, (undefined(name='main') if l_0_main is missing else l_0_main)))
        if (undefined(name='fused_source') if l_0_fused_source is missing else l_0_fused_source):
            pass
            yield '    if fused:\n        dot_dtype = _dot_dtype('
            yield str((undefined(name='args') if l_0_args is missing else l_0_args))
            yield ")\n        # each kernel writes the module's outputs in their dtype (stored_dtype), and what a\n        # later stage reads in float32\n"
            for l_1_line in (undefined(name='fused_host') if l_0_fused_host is missing else l_0_fused_host):
                _loop_vars = {}
                pass
                if l_1_line:
                    pass
                    yield '        '
                    yield str(l_1_line)
                yield '\n'
            l_1_line = missing
            yield '        return '
            l_1_loop = missing
            for l_1_o, l_1_loop in LoopContext((undefined(name='outputs') if l_0_outputs is missing else l_0_outputs), undefined):
                _loop_vars = {}
                pass
                yield str(t_3(l_1_o))
                yield '.to(out_dtype)'
                if (not environment.getattr(l_1_loop, 'last')):
                    pass
                    yield ', '
            l_1_loop = l_1_o = missing
            yield '\n\n'
        for l_1_line in (undefined(name='host_lines') if l_0_host_lines is missing else l_0_host_lines):
            _loop_vars = {}
            pass
            if l_1_line:
                pass
                yield '    '
                yield str(l_1_line)
            yield '\n'
        l_1_line = missing
        yield "\n    # The host lines leave outputs at their final values (0 where absent in the\n    # kernels' cascade).\n    return "
        l_1_loop = missing
        for l_1_o, l_1_loop in LoopContext((undefined(name='outputs') if l_0_outputs is missing else l_0_outputs), undefined):
            _loop_vars = {}
            pass
            yield str(t_3(l_1_o))
            yield '.to(out_dtype)'
            if (not environment.getattr(l_1_loop, 'last')):
                pass
                yield ', '
        l_1_loop = l_1_o = missing
        yield '\n\n'
    yield "\n\n# ---------------------------------------------------------------- torch.compile\n# Under torch.compile a call runs as this module's custom ops (torch.library; see\n# docs/torch_compile.md in einsumattn): the compiler sees one opaque op per call, whose\n# fake implementation gives the outputs' shapes from the inputs' alone, so a model\n# traces with fullgraph=True, and compiles once for every sequence length with dynamic\n# shapes. Their backward is the eager one: "
    if (undefined(name='training') if l_0_training is missing else l_0_training):
        pass
        yield 'the training kernels for backend="triton",\n# else autograd through the torch backend, run again on the saved inputs.'
    else:
        pass
        yield 'autograd\n# through the torch backend, run again on the saved inputs.'
    yield '\n# Eagerly a call runs the backends directly, without the dispatcher\'s overhead.\n\n# The ops\' names in the namespace "einsumattn": OP_NAME + "_<op>" (OPS[op].name() says\n# the name registered), the spec\'s name and a hash of its text and compile options.\nOP_NAME = '
    yield str(t_6(environment.getattr((undefined(name='ops') if l_0_ops is missing else l_0_ops), 'name')))
    yield '\n# Op -> its schema.\nOP_SCHEMAS = '
    yield str(t_7(environment.getattr((undefined(name='ops') if l_0_ops is missing else l_0_ops), 'schemas')))
    yield '\nOPS = None      # op -> its OpOverload once registered (None: a torch without custom_op)\n_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)\n\n\ndef _shapes('
    yield str((undefined(name='args') if l_0_args is missing else l_0_args))
    yield ') -> tuple:\n    """The shapes of the outputs and of what the training forward saves, from the\n    inputs\' shapes alone (the ops\' fake implementations; no params are read)."""\n    sizes = {'
    l_1_loop = missing
    for (l_1_r, l_1_size), l_1_loop in LoopContext(context.call(environment.getattr(environment.getattr((undefined(name='ops') if l_0_ops is missing else l_0_ops), 'fixed'), 'items')), undefined):
        _loop_vars = {}
        pass
        yield str(t_6(l_1_r))
        yield ': '
        yield str(l_1_size)
        if (not environment.getattr(l_1_loop, 'last')):
            pass
            yield ', '
    l_1_loop = l_1_r = l_1_size = missing
    yield '}\n    origin = {'
    l_1_loop = missing
    for l_1_r, l_1_loop in LoopContext(environment.getattr((undefined(name='ops') if l_0_ops is missing else l_0_ops), 'fixed'), undefined):
        _loop_vars = {}
        pass
        yield str(t_6(l_1_r))
        yield ': "its fixed size in the spec"'
        if (not environment.getattr(l_1_loop, 'last')):
            pass
            yield ', '
    l_1_loop = l_1_r = missing
    yield '}\n'
    for l_1_line in environment.getattr((undefined(name='ops') if l_0_ops is missing else l_0_ops), 'size_lines'):
        _loop_vars = {}
        pass
        yield '    '
        yield str(l_1_line)
        yield '\n'
    l_1_line = missing
    yield '    return ('
    for l_1_shape in environment.getattr((undefined(name='ops') if l_0_ops is missing else l_0_ops), 'output_shapes'):
        _loop_vars = {}
        pass
        yield str(l_1_shape)
        yield ', '
    l_1_shape = missing
    yield '), ('
    for l_1_shape in environment.getattr((undefined(name='ops') if l_0_ops is missing else l_0_ops), 'saved_shapes'):
        _loop_vars = {}
        pass
        yield str(l_1_shape)
        yield ', '
    l_1_shape = missing
    yield ')\n\n\ndef _as_op(backend: str, overrides: dict, inputs):\n    """A call under torch.compile: one op (params as floats, None for defaults)."""\n    values = [None if overrides.get(p) is None else float(overrides[p]) for p in PARAMS]\n'
    if (undefined(name='training') if l_0_training is missing else l_0_training):
        pass
        yield '    if backend == "triton" and torch.is_grad_enabled() and any(t.requires_grad for t in inputs):\n        results = OPS["train"](*inputs, *values)\n        results = results if isinstance(results, tuple) else (results,)\n        return _returned(results[:len(OUTPUTS)])\n'
    yield '    return OPS["forward"](*inputs, backend, *values)\n\n\ndef _cut(args, *counts):\n    """`args` cut into consecutive groups of `counts`, the rest last."""\n    groups, start = [], 0\n    for count in counts:\n        groups.append(args[start:start + count])\n        start += count\n    return (*groups, args[start:])\n\n\ndef _given(values) -> dict:\n    """The overrides an op\'s float? params stand for."""\n    return {p: v for p, v in zip(PARAMS, values) if v is not None}\n\n\ndef _fresh(results, args) -> tuple:\n    """`results` contiguous (as the fake implementations say) and sharing memory with\n    none of `args` nor one another (an op\'s outputs may not alias): a float32 output is\n    the very tensor the training forward saves."""\n    taken = {t.untyped_storage().data_ptr() for t in args\n             if isinstance(t, torch.Tensor) and t.numel()}\n    fresh = []\n    for t in results:\n        t = t.contiguous()\n        if t.numel() and t.untyped_storage().data_ptr() in taken:\n            t = t.clone()\n        taken.add(t.untyped_storage().data_ptr())\n        fresh.append(t)\n    return tuple(fresh)\n\n\ndef _returned(results):\n    return results[0] if len(results) == 1 else results\n\n\ndef _gradients(grads, inputs, needs) -> tuple:\n    """An op\'s gradients: one tensor per input, in its dtype; zeros where no output\n    depends on it, empty where none is wanted."""\n    return tuple((torch.zeros_like(t) if g is None else g.to(t.dtype)) if need\n                 else t.new_empty(0) for g, t, need in zip(grads, inputs, needs))\n\n\ndef _materialized(ctx, cotangents) -> tuple:\n    """The outputs\' cotangents, zeros where autograd passes None."""\n    return tuple(torch.zeros(shape, dtype=dtype, device=ctx.device) if c is None else c\n                 for c, (shape, dtype) in zip(cotangents, ctx.outputs))\n\n\ndef _op_forward(*args):\n    inputs, (backend,), values = _cut(args, len(INPUTS), 1)\n    with torch.no_grad():\n        results = _run(backend, _given(values), *inputs)\n    return _returned(_fresh(results if isinstance(results, tuple) else (results,), inputs))\n\n\ndef _fake_forward(*args):\n    inputs, rest = _cut(args, len(INPUTS))\n    out_dtype = next((t.dtype for t in inputs if t.is_floating_point()), torch.float32)\n    shapes, saved = _shapes(*inputs)\n    return _returned(tuple(inputs[0].new_empty(s, dtype=out_dtype) for s in shapes))\n\n\ndef _setup_forward(ctx, inputs, output):\n    inputs, (ctx.backend,), ctx.values = _cut(inputs, len(INPUTS), 1)\n    results = output if isinstance(output, tuple) else (output,)\n    ctx.outputs = [(o.shape, o.dtype) for o in results[:len(OUTPUTS)]]\n    ctx.device = results[0].device\n    ctx.save_for_backward(*inputs)\n\n\ndef _backward_forward(ctx, *cotangents):\n    needs = list(ctx.needs_input_grad[:len(INPUTS)])\n    grads = OPS["backward"](*ctx.saved_tensors, *_materialized(ctx, cotangents), ctx.backend,\n                            *ctx.values, needs)\n    grads = grads if isinstance(grads, tuple) else (grads,)\n    return (*(g if need else None for g, need in zip(grads, needs)),\n            None, *(None for p in PARAMS))\n\n\ndef _op_backward(*args):\n    inputs, cotangents, (backend,), values, (needs,) = _cut(\n        args, len(INPUTS), len(OUTPUTS), 1, len(PARAMS))\n    replayed = "torch" if backend.startswith("triton") else backend\n    # The dispatcher runs an op\'s implementation with autograd\'s keys excluded; the\n    # replay needs them back (a private guard of torch\'s: a torch without it fails here\n    # rather than return zeros).\n    keys = torch._C.DispatchKey\n    with torch._C._SetExcludeDispatchKeyGuard(keys.AutogradFunctionality, False), \\\n            torch._C._SetExcludeDispatchKeyGuard(keys.ADInplaceOrView, False):\n        grads = _replayed_grads(replayed, _given(values), inputs, needs, cotangents)\n    return _returned(_fresh(_gradients(grads, inputs, needs), args))\n\n\ndef _fake_backward(*args):\n    inputs, rest = _cut(args, len(INPUTS))\n    return _returned(tuple(t.new_empty(t.shape) if need else t.new_empty(0)\n                           for t, need in zip(inputs, args[-1])))\n'
    if (undefined(name='training') if l_0_training is missing else l_0_training):
        pass
        yield '\n\n\ndef _op_train(*args):\n    inputs, values = _cut(args, len(INPUTS))\n    with torch.no_grad():\n        outputs, saved = _triton_saving(*inputs, _given(values))\n    return _returned(_fresh((*outputs, *saved), inputs))\n\n\ndef _fake_train(*args):\n    inputs, values = _cut(args, len(INPUTS))\n    out_dtype = next((t.dtype for t in inputs if t.is_floating_point()), torch.float32)\n    shapes, saved = _shapes(*inputs)\n    return _returned((*(inputs[0].new_empty(s, dtype=out_dtype) for s in shapes),\n                      *(inputs[0].new_empty(s, dtype=torch.float32) for s in saved)))\n\n\ndef _setup_train(ctx, inputs, output):\n    inputs, ctx.values = _cut(inputs, len(INPUTS))\n    output = output if isinstance(output, tuple) else (output,)\n    ctx.outputs = [(o.shape, o.dtype) for o in output[:len(OUTPUTS)]]\n    ctx.device = output[0].device\n    ctx.save_for_backward(*inputs, *output[len(OUTPUTS):])\n\n\ndef _backward_train(ctx, *cotangents):\n    needs = list(ctx.needs_input_grad[:len(INPUTS)])\n    grads = OPS["train_backward"](*ctx.saved_tensors,\n                                  *_materialized(ctx, cotangents[:len(OUTPUTS)]),\n                                  *ctx.values, needs)\n    grads = grads if isinstance(grads, tuple) else (grads,)\n    return (*(g if need else None for g, need in zip(grads, needs)),\n            *(None for p in PARAMS))\n\n\ndef _op_train_backward(*args):\n    inputs, saved, cotangents, values, (needs,) = _cut(\n        args, len(INPUTS), '
        yield str(environment.getattr((undefined(name='ops') if l_0_ops is missing else l_0_ops), 'saved_count'))
        yield ', len(OUTPUTS), len(PARAMS))\n    grads = _triton_backward(*inputs, saved, cotangents, _given(values))\n    return _returned(_fresh(_gradients(grads, inputs, needs), args))\n'
    yield '\n\n\ndef _register_ops():\n    """Register the ops under names of their own: OP_NAME + "_<op>", with a number\n    after the hash when a copy of this module was imported before (the copies keep\n    their own tuning tables)."""\n    if not hasattr(torch, "library") or not hasattr(torch.library, "custom_op"):\n        return None       # torch < 2.4: calls under torch.compile run directly\n    kernels = {"forward": (_op_forward, _fake_forward, _setup_forward, _backward_forward),\n               "backward": (_op_backward, _fake_backward, None, None),\n'
    if (undefined(name='training') if l_0_training is missing else l_0_training):
        pass
        yield '               "train": (_op_train, _fake_train, _setup_train, _backward_train),\n               "train_backward": (_op_train_backward, _fake_backward, None, None),\n'
    yield '               }\n    base, copy = OP_NAME, 0\n    while any(hasattr(torch.ops.einsumattn, f"{base}_{op}") for op in kernels):\n        copy += 1\n        base = f"{OP_NAME}_{copy}"\n    ops = {}\n    for op, (run, fake, setup, backward) in kernels.items():\n        defined = torch.library.custom_op(f"einsumattn::{base}_{op}", run, mutates_args=(),\n                                          schema=OP_SCHEMAS[op])\n        defined.register_fake(fake)\n        if backward is not None:\n            defined.register_autograd(backward, setup_context=setup)\n        ops[op] = getattr(torch.ops.einsumattn, f"{base}_{op}").default\n    return ops\n\n\nOPS = _register_ops()\n\n# ---------------------------------------------------------------- the public API\n# Arguments carry the spec\'s names; the bodies only pass them on, so any name works.\n\ndef reference('
    yield str((undefined(name='public_args') if l_0_public_args is missing else l_0_public_args))
    yield str((undefined(name='keyword_params') if l_0_keyword_params is missing else l_0_keyword_params))
    yield '):\n    """The reference backend (backend="reference"): the cascade as plain torch code, one\n    block per Einsum. Intermediates in float32; outputs in the dtype of the first\n    floating input."""\n    return _reference('
    yield str((undefined(name='public_args') if l_0_public_args is missing else l_0_public_args))
    yield ', _check_params('
    yield str((undefined(name='overrides') if l_0_overrides is missing else l_0_overrides))
    yield '))\n\n\nclass '
    yield str((undefined(name='class_name') if l_0_class_name is missing else l_0_class_name))
    yield '(torch.nn.Module):\n    """`'
    yield str((undefined(name='name') if l_0_name is missing else l_0_name))
    yield '` as a module: forward('
    yield str(t_5(context.eval_ctx, (undefined(name='inputs') if l_0_inputs is missing else l_0_inputs), ', '))
    yield ') -> '
    yield str(t_5(context.eval_ctx, (undefined(name='outputs') if l_0_outputs is missing else l_0_outputs), ', '))
    yield '.\n\n    backend: "triton" (GPU kernels: the fused schedule where the cascade has one),\n    "triton-unfused" (one kernel per Einsum), "torch" (the same schedule as torch code,\n    any device; the reference where there is no fused schedule: TORCH_FALLBACK) or\n    "reference" (the spec as straight-line torch, one block per Einsum; any device).\n    Params ('
    yield str((t_5(context.eval_ctx, (undefined(name='params') if l_0_params is missing else l_0_params), ', ') or 'none'))
    yield ') default as in the spec.\n    """\n\n    def __init__(self, backend="triton"'
    yield str((undefined(name='class_params') if l_0_class_params is missing else l_0_class_params))
    yield '):\n        super().__init__()\n        self.backend = _backend(backend)\n        self.params = _check_params('
    yield str((undefined(name='class_overrides') if l_0_class_overrides is missing else l_0_class_overrides))
    yield ')\n\n    def forward(self, '
    yield str((undefined(name='public_args') if l_0_public_args is missing else l_0_public_args))
    yield '):\n        return _forward(self.backend, self.params, '
    yield str((undefined(name='public_args') if l_0_public_args is missing else l_0_public_args))
    yield ')\n\n    def extra_repr(self) -> str:\n        return f"backend={self.backend!r}" + "".join(f", {k}={v!r}" for k, v in self.params.items())\n\n\ndef '
    yield str((undefined(name='function_name') if l_0_function_name is missing else l_0_function_name))
    yield '('
    yield str((undefined(name='public_args') if l_0_public_args is missing else l_0_public_args))
    yield ', *, backend="triton"'
    yield str((undefined(name='function_params') if l_0_function_params is missing else l_0_function_params))
    yield '):\n    """`'
    yield str((undefined(name='name') if l_0_name is missing else l_0_name))
    yield '` as a function; see '
    yield str((undefined(name='class_name') if l_0_class_name is missing else l_0_class_name))
    yield '."""\n    return _forward(_backend(backend), _check_params('
    yield str((undefined(name='overrides') if l_0_overrides is missing else l_0_overrides))
    yield '), '
    yield str((undefined(name='public_args') if l_0_public_args is missing else l_0_public_args))
    yield ')\n'
    if (undefined(name='merge') if l_0_merge is missing else l_0_merge):
        pass
        yield '\n\n# ---------------------------------------------------------------- partial states (compile --merge)\n'
        if environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'refused'):
            pass
            yield '\n'
            for l_1_line in environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'refused'):
                _loop_vars = {}
                pass
                yield '# '
                yield str(l_1_line)
                yield '\n'
            l_1_line = missing
            yield 'MERGE = None\n'
        else:
            pass
            yield '\n'
            if (environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'kind') == 'prefix'):
                pass
                yield '# The prefix combine of the states over ranges of '
                yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'rank'))
                yield ' (LASP-2; docs/merge.md;\n# `einsumattn analyze` prints its derivation and proof): `partial` computes the state of\n# one range of '
                yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'rank'))
                yield " from a zero start, `merge` combines the states of two adjacent\n# ranges (associative), `finish` computes a range's outputs from the state entering it\n# (the merge of the earlier ranges' states; zeros before the first). Proved:\n"
            else:
                pass
                yield '# The merge of partial states over ranges of '
                yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'rank'))
                yield ' (docs/merge.md; `einsumattn analyze`\n# prints its derivation and proof): `partial` computes the state of one range of '
                yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'rank'))
                yield ',\n# `merge` combines the states of two adjacent ranges (associative: any bracketing gives\n# the same state), `finish` turns the state of the whole of '
                yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'rank'))
                yield ' into the outputs.\n# Split-KV decoding and context parallelism are built from these. Proved:\n'
            for l_1_proof in environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'proofs'):
                _loop_vars = {}
                pass
                yield '#   '
                yield str(l_1_proof)
                yield '\n'
            l_1_proof = missing
            yield 'MERGE = '
            yield str(t_7(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'data')))
            yield '\n'
            l_1_loop = missing
            for l_1_piece, l_1_loop in LoopContext(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'pieces'), undefined):
                _loop_vars = {}
                pass
                yield '\n\n'
                yield str(context.call((undefined(name='bind_function') if l_0_bind_function is missing else l_0_bind_function), l_1_piece, _loop_vars=_loop_vars))
                yield '\n\ndef '
                yield str(environment.getattr(l_1_piece, 'function'))
                yield '('
                yield str(environment.getattr(l_1_piece, 'args'))
                yield ', overrides: dict):\n    """The cascade of `'
                yield str(environment.getattr(l_1_piece, 'role'))
                yield '` (MERGE) as plain torch code, in float32."""\n'
                yield str(context.call((undefined(name='torch_prologue') if l_0_torch_prologue is missing else l_0_torch_prologue), l_1_piece, _loop_vars=_loop_vars))
                for l_2_line in environment.getattr(l_1_piece, 'body_lines'):
                    _loop_vars = {}
                    pass
                    if l_2_line:
                        pass
                        yield '    '
                        yield str(l_2_line)
                    yield '\n'
                l_2_line = missing
                yield '\n    return {'
                l_2_loop = missing
                for (l_2_key, l_2_tensor), l_2_loop in LoopContext(environment.getattr(l_1_piece, 'returned'), undefined):
                    _loop_vars = {}
                    pass
                    yield str(t_6(l_2_key))
                    yield ': '
                    if (l_2_tensor in environment.getattr(l_1_piece, 'absent')):
                        pass
                        yield 'torch.where('
                        yield str(t_3(l_2_tensor))
                        yield '_ok, '
                        yield str(t_3(l_2_tensor))
                        yield ', 0.0)'
                    else:
                        pass
                        yield str(t_3(l_2_tensor))
                    if (not environment.getattr(l_2_loop, 'last')):
                        pass
                        yield ', '
                l_2_loop = l_2_key = l_2_tensor = missing
                yield '}\n'
            l_1_loop = l_1_piece = missing
            yield '\n\ndef partial('
            yield str((undefined(name='public_args') if l_0_public_args is missing else l_0_public_args))
            yield ', *, '
            yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'start'))
            yield ', '
            yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'count'))
            for l_1_o in environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'offsets'):
                _loop_vars = {}
                pass
                yield ', '
                yield str(l_1_o)
                yield '=0'
            l_1_o = missing
            yield str((undefined(name='function_params') if l_0_function_params is missing else l_0_function_params))
            yield '):\n    """The state of the '
            yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'rank'))
            yield ' range of the inputs given: positions '
            yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'start'))
            yield ' ..\n    '
            yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'start'))
            yield ' + (its length) - 1 of '
            yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'count'))
            yield ' in all (masks and scores see those\n    positions; params whose default reads '
            yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'rank'))
            yield ' read '
            yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'count'))
            yield ')'
            if environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'offsets'):
                pass
                yield '; '
                yield str(t_5(context.eval_ctx, environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'offsets'), ', '))
                yield ': the\n    first position of the inputs\' other ranges (MERGE["offsets"])'
            yield '. A dict of float32\n    tensors, MERGE["state"]."""\n    overrides = _check_params('
            yield str((undefined(name='overrides') if l_0_overrides is missing else l_0_overrides))
            yield ')\n    overrides.update({'
            yield str(t_6(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'start')))
            yield ': '
            yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'start'))
            yield ', '
            yield str(t_6(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'count')))
            yield ': '
            yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'count'))
            for l_1_o in environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'offsets'):
                _loop_vars = {}
                pass
                yield ', '
                yield str(t_6(l_1_o))
                yield ': '
                yield str(l_1_o)
            l_1_o = missing
            yield '})\n    return _merge_partial('
            yield str((undefined(name='public_args') if l_0_public_args is missing else l_0_public_args))
            yield ', overrides)\n\n\ndef merge(a, b):\n    """The state of two adjacent ranges, `a`\'s before `b`\'s, from theirs."""\n    return _merge_combine('
            yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'combine_args'))
            yield ', {})\n\n\ndef finish('
            yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'finish_signature'))
            yield '):\n'
            if (environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'kind') == 'prefix'):
                pass
                yield '    """The outputs ('
                yield str(t_5(context.eval_ctx, (undefined(name='outputs') if l_0_outputs is missing else l_0_outputs), ', '))
                yield ') of the '
                yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'rank'))
                yield ' range of the inputs given, in float32,\n    from the state entering it (`merge` of the earlier ranges\' states)."""\n'
            else:
                pass
                yield '    """The outputs ('
                yield str(t_5(context.eval_ctx, (undefined(name='outputs') if l_0_outputs is missing else l_0_outputs), ', '))
                yield '), in float32, from the state of the whole of '
                yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'rank'))
                yield '."""\n'
            yield '    overrides = _check_params('
            yield str((undefined(name='overrides') if l_0_overrides is missing else l_0_overrides))
            yield ')\n'
            for l_1_name in environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'finish_passed'):
                _loop_vars = {}
                pass
                yield '    overrides['
                yield str(t_6(l_1_name))
                yield '] = '
                yield str(l_1_name)
                yield '\n'
            l_1_name = missing
            yield '    result = _merge_finish('
            yield str(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'finish_args'))
            yield ', overrides)\n    return '
            l_1_loop = missing
            for l_1_o, l_1_loop in LoopContext((undefined(name='outputs') if l_0_outputs is missing else l_0_outputs), undefined):
                _loop_vars = {}
                pass
                yield 'result['
                yield str(t_6(l_1_o))
                yield ']'
                if (not environment.getattr(l_1_loop, 'last')):
                    pass
                    yield ', '
            l_1_loop = l_1_o = missing
            yield '\n'
            if environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'lse'):
                pass
                yield '\n\n\ndef log_sum_exp(state):\n    """The log-sum-exp of the scores over the keys the state holds ('
                yield str(environment.getitem(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'lse'), 0))
                yield ' + log '
                yield str(environment.getitem(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'lse'), 1))
                yield '):\n    -inf where it holds none."""\n    return state['
                yield str(t_6(environment.getitem(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'lse'), 0)))
                yield '] + torch.log(state['
                yield str(t_6(environment.getitem(environment.getattr((undefined(name='merge') if l_0_merge is missing else l_0_merge), 'lse'), 1)))
                yield '])\n'

blocks = {}
debug_info = '1=106&3=112&4=115&7=122&8=126&9=141&13=145&17=147&21=149&22=151&1=154&23=158&33=160&44=164&46=175&47=177&48=179&49=186&51=193&52=195&54=202&56=204&58=206&64=208&94=210&96=223&97=241&98=257&100=272&125=274&127=276&144=278&148=281&153=285&154=301&155=312&156=340&157=342&158=348&172=357&174=372&177=374&179=386&185=406&187=408&188=410&190=413&194=415&196=427&200=438&204=441&208=443&229=445&231=447&233=453&234=456&235=458&239=461&244=464&251=466&258=468&423=472&427=475&430=478&440=484&450=488&461=492&462=495&465=508&468=511&471=523&472=534&475=548&479=550&481=562&482=569&483=579&486=592&491=594&495=596&496=600&499=602&500=613&502=623&506=634&515=645&522=652&524=654&529=656&532=659&533=671&534=681&535=689&541=703&644=707&682=710&696=713&719=717&723=720&726=724&727=726&733=732&736=734&739=736&741=738&742=740&748=742&749=748&750=752&751=756&754=759&755=762&758=773&760=778&763=783&764=785&766=787&768=789&769=797&770=800&772=804&774=806&775=810&776=812&778=824&781=846&782=860&783=864&784=868&787=878&788=880&789=896&794=898&797=900&798=902&800=912&801=917&802=919&803=929&804=932&805=943&809=946&811=950'
