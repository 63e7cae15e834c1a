"""Build the Titans-family mixers from one flat set of keywords, as the tests and benchmarks write
them: the inner-rule fields (`memory`, `chunk_size` / `chunk_mem`, `dgd`, `mean_step`, ...) go
into the `InnerRule`, `proj_memory` / `chunk_proj` into the projection memories' rule, the rest
to the layer."""

from dataclasses import fields, replace

from hope.layers.self_modifying import SelfModifyingTitans
from hope.layers.titans import TitansMixer
from hope.ops.rule import InnerRule

RULE_FIELDS = {f.name for f in fields(InnerRule)}
ALIASES = {"memory": "kind", "chunk_mem": "chunk_size"}


def split_rule(kw, **defaults):
    rule = dict(defaults)
    for k in list(kw):
        if ALIASES.get(k, k) in RULE_FIELDS:
            rule[ALIASES.get(k, k)] = kw.pop(k)
    return InnerRule(**rule)


def titans(d_model, n_heads, **kw):
    return TitansMixer(d_model, n_heads, split_rule(kw, dgd=False), **kw)


def selfmod(d_model, n_heads, **kw):
    proj = {k: kw.pop(k) for k in ("proj_memory", "chunk_proj") if k in kw}
    rule = split_rule(kw, momentum_norm=True)
    proj_rule = replace(rule, kind=proj.get("proj_memory", "mlp"),
                        chunk_size=proj.get("chunk_proj", rule.chunk_size))
    return SelfModifyingTitans(d_model, n_heads, rule, proj_rule, **kw)


BUILDERS = {TitansMixer: titans, SelfModifyingTitans: selfmod}
