"""``ddpm-export validate`` on policy engines (ddpm_export.evaluation.validate_policy)."""
from __future__ import annotations


import click

# validate's options for image engines: refused when given for a policy, not silently ignored
IMAGE_ONLY = ("trajectory_images", "samples", "reference_samples", "inception_weights", "onnx_reference",
              "final_atol_fp32", "fd_excess", "confident_ratio", "label_accuracy_ratio", "labels", "guidance",
              "likelihood_images", "likelihood_t_samples", "nll_atol", "allow_host_code")
POLICY_T_STRIDE = 10  # T = 100 for LeRobot's policies: 11 timesteps, not validate's image default of 3


def run_policy_validate(ctx: click.Context, checkpoint, engines, report, eps_fp32, eps_fp16, chunk_fp32,
                        chunk_fp16) -> None:
    from click.core import ParameterSource

    from ddpm_export.evaluation.validate_policy import (PolicyThresholds, format_policy_report,
                                                        is_policy_engine, validate_policy)

    others = [e for e in engines if not is_policy_engine(e)]
    if others:
        raise click.UsageError(f"{', '.join(others)}: not policy engines, validated beside policy engines; "
                               f"validate image engines and policy engines in separate runs")
    given = [f"--{n.replace('_', '-')}" for n in IMAGE_ONLY
             if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"{', '.join(given)}: image-engine options, received for a policy engine; "
                               f"a policy is checked by encoder, denoiser and chunk (see --help)")
    p = ctx.params
    t_stride = p["t_stride"] if ctx.get_parameter_source("t_stride") == ParameterSource.COMMANDLINE \
        else POLICY_T_STRIDE
    th = PolicyThresholds(eps_fp32=eps_fp32, eps_fp16=eps_fp16, chunk_fp32=chunk_fp32, chunk_fp16=chunk_fp16)
    rep = validate_policy(engines, checkpoint, th, t_stride=t_stride, batches=p["batches"] or None,
                          seed=p["seed"], method=p["method"], steps=p["method_steps"], force=p["force"],
                          log=lambda s: click.echo(s, err=True))
    table = format_policy_report(rep)
    if report:
        from ddpm_export.cli.options import write_report

        out = write_report(report, rep, table)
        click.echo(f"wrote {out / 'report.json'} and {out / 'report.md'}", err=True)
    click.echo(table)
    if not rep["passed"]:
        raise click.exceptions.Exit(1)
