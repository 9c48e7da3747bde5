# opgrpo: Flow-GRPO / OP-GRPO post-training as a pipeline of separate stages.
#   snakemake --profile profiles/local          the default (embedded) experiment and its report
#   snakemake -f runs/flowgrpo/iter_00003/rewards.parquet   rerun one stage of one iteration
# Every stage is a plain function (opgrpo_stages.stages.*) also runnable as `opgrpo <stage>`.
# Stages run inside the Snakemake process (`run:`), as threads, also inside a cluster job: torch is
# imported and the models are loaded once per process; rollout, score, policy_update and evaluate
# with `distributed.nodes` x `distributed.processes` > 1 run on that many resident ranks, this
# process being rank 0. How stages run is opgrpo_stages/execution/ (docs/architecture.md).
import sys
from types import SimpleNamespace as Namespace

from snakemake.utils import min_version, validate

from opgrpo_stages import config as C
from opgrpo_stages.execution import workflow as X
from opgrpo_stages import layout as L
from opgrpo_stages import startup

min_version("9.20")
sys.setrecursionlimit(100000)  # long iteration chains recurse deeply in the DAG builder

configfile: "config.yaml"
report: "report/workflow.rst"  # the report opens on the results (with --report-metadata, set in the profiles)

# Snakemake's group checks are quadratic in the jobs: a linear one (1,000-iteration presets); inside
# a cluster job, its stages run as threads of its one process, so its models stay loaded across
# them (docs/architecture.md "Resident worker"). Both in opgrpo_stages/execution/snakemake_patches.py.
X.install_snakemake_patches(workflow.remote_exec)

# a killed earlier run left its locks: rerunning the same command resumes (opgrpo_stages/execution/locks.py)
for _lock in X.clear_stale_locks():
    print(f"opgrpo: removed stale lock .snakemake/locks/{_lock} of a Snakemake process that is gone", file=sys.stderr)


onstart:
    X.record_lock_owner()
    from opgrpo_stages.evaluators import launch  # evaluator servers with a `command` (docs/evaluators.md)

    launch.start(RUN_CFG.values())


onsuccess:
    X.release_lock_owner()
    from opgrpo_stages.evaluators import launch

    launch.stop()


onerror:
    X.release_lock_owner()
    from opgrpo_stages.evaluators import launch

    launch.stop()


# first: its one-line error names the key and the file (snakemake's is a schema dump); --config
# 'train={iterations: 42}' (and the slurm profile's `config:` line) arrive as strings from Snakemake's
# parser and are read as YAML here
SOURCES = C.snakemake_sources(workflow)
C.retype_cli_overrides(config, workflow.config_settings.config)
C.validate_sources(config, SOURCES["overlays"], workflow.config_settings.config)
validate(config, str(C.SCHEMA_PATH))
C.expand_seed_runs(config)  # `seeds:` adds <run>-seed<k> runs and the `seeds` experiment
L.set_root(config["output_root"])  # runs/, results/, logs/ of this config (presets set their own)
RUNS = list(config["runs"])
EXPERIMENTS = config["experiments"]
RUN_CFG = {r: C.resolve_run(config, r, SOURCES["name"]) for r in RUNS}
FIRST = RUNS[0]
# what can be known before any job: the targets' runs exist, their model.path and prompt files too
startup.check(config, RUN_CFG, workflow.config_settings.config, sys.argv)


def cfg_of(run):
    return RUN_CFG[FIRST] if run == "base" else RUN_CFG[run]


def last_iter(run):
    return RUN_CFG[run]["train"]["iterations"] - 1


def K(w):
    """The iteration of a job; one past the run's end is an error naming train.iterations."""
    k = int(w.iter)
    if k > last_iter(w.run):
        L.check_iteration(RUN_CFG[w.run], k)
    return k


def rerun_params(stage, cfg_for=lambda w: RUN_CFG[w.run], configs=None):
    """`params:` recording the config keys the stage depends on (rerun trigger `params`, see C.stage_params)."""
    return C.rule_params(stage, cfg_for, configs or RUN_CFG.values())


def iteration_group(w):
    """The cluster job a stage runs in: `cluster.iterations_per_job` consecutive iterations of one run
    (all their stages, and init_policy with the first) go into one job. Local runs ignore groups."""
    return cluster_job(w.run, int(w.get("iter", 0)))


def cluster_job(run, k):
    n = RUN_CFG[run]["cluster"]["iterations_per_job"]
    return f"{run}-iters{k // n * n:05d}"


def eval_job(w):
    """Held-out evaluation of an iteration: a cluster job of its own, which starts when the
    training job that wrote its policy ends and runs beside the next training job."""
    return f"{w.run}-eval{int(w.iter):05d}"


MULTI_NODE = any(int(c["distributed"].get("nodes", 1)) > 1 for c in RUN_CFG.values())


def stage_resources(stage, data_parallel=False):
    """Slurm runtime, host memory and (data-parallel stages: one per rank) GPUs and nodes of a
    stage, from the run's config (opgrpo_stages/execution/cluster.py)."""
    return X.rule_resources(stage, cfg_of, MULTI_NODE, data_parallel)


wildcard_constraints:
    run="[A-Za-z0-9_.-]+",
    iter=r"\d{5}",
    split="train|heldout|t2i_compbench",


localrules: all, prompts, report, report_speedup, tensorboard


def report_files(exp):
    from opgrpo_stages.stages.report import outputs_for

    return list(outputs_for(exp).values())


from opgrpo_stages.report.outputs import SPEEDUP as SPEEDUP_EXPERIMENTS, speedup_outputs

SPEEDUP_OUTPUTS = speedup_outputs("{exp}")  # rule report_speedup's files; rule report writes the others


# Watching a run (README): each iteration's record and each held-out evaluation, read from the tables
# above into a TensorBoard event file (`tensorboard --logdir runs`) and, with `logging.wandb`, to wandb.
# In the main Snakemake process, as soon as the tables exist; it writes no results file.
from opgrpo_stages.monitor import records, wandb_feed

wandb_feed.check(RUN_CFG.values(), SOURCES["name"])  # wandb missing or not logged in: one line, before any job


def monitor_files(exp):
    runs = EXPERIMENTS[exp]
    return ([L.events("base", "heldout", 0)]
            + [L.events(r, "train", k) for r in runs for k in range(last_iter(r) + 1)]
            + [L.events(r, "heldout", k) for r in runs for k in L.eval_iterations(RUN_CFG[r])])


rule all:
    input:
        report_files("main"),
        monitor_files("main"),


for _exp in EXPERIMENTS:  # one target per experiment: `snakemake ablations`, `snakemake seeds`

    rule:
        name:
            _exp
        input:
            report_files(_exp),
            monitor_files(_exp),


rule prompts:
    output:
        L.prompts("{split}"),
    log:
        L.log("prompts_{split}.log"),
    run:
        from opgrpo_stages.stages.prompts import make_prompts

        with X.rule_log(log[0]):
            make_prompts(RUN_CFG[FIRST], wildcards.split, output[0])


rule pretrain_base:
    output:
        weights=config["model"]["base_weights"] or "models/none.safetensors",
        log_json=(config["model"]["base_weights"] or "models/none.safetensors").replace(".safetensors", ".json"),
    log:
        L.log("pretrain_base.log"),
    benchmark:
        L.log("benchmarks/pretrain_base.tsv")
    threads: workflow.cores
    run:
        from opgrpo_stages.stages.pretrain import pretrain

        with X.rule_log(log[0]):
            pretrain(RUN_CFG[FIRST], output.weights, output.log_json)


rule embed_prompts:
    input:
        prompts=L.prompts("{split}"),
    output:
        L.prompt_embeddings("{split}"),
    log:
        L.log("embed_prompts_{split}.log"),
    threads: workflow.cores
    run:
        from opgrpo_stages.stages.embed_prompts import embed_prompts

        with X.rule_log(log[0]):
            embed_prompts(RUN_CFG[FIRST], prompts_path=input.prompts, out_embeddings=output[0])


def prompt_embeddings(split):
    """The embed_prompts output for backbones that read precomputed embeddings (sd3, wan), else none."""
    from opgrpo_stages.backbones import uses_prompt_embeddings

    return lambda w: [L.prompt_embeddings(split)] if uses_prompt_embeddings(cfg_of(w.get("run", FIRST))["model"]) else []


def t2i_prompt_embeddings(w):
    """Table 2's benchmark prompts embedded once, when the backbone reads embeddings and Table 2 samples."""
    from opgrpo_stages.backbones import uses_prompt_embeddings
    from opgrpo_stages.stages.final_eval import needs_t2i_prompts

    c = cfg_of(w.get("run", FIRST))
    return [L.prompt_embeddings("t2i_compbench")] if uses_prompt_embeddings(c["model"]) and needs_t2i_prompts(c) else []


def first_or_none(files):
    return files[0] if len(files) else None


def base_weights(_w=None):
    return [config["model"]["base_weights"]] if config["model"]["base_weights"] else []


rule init_policy:
    input:
        base_weights,
    output:
        policy=update(L.policy("{run}", -1)),
        optimizer=update(L.optimizer("{run}", -1)),
        buffer=update(L.buffer("{run}", -1)[0]),
        buffer_table=update(L.buffer("{run}", -1)[1]),
    params:
        *rerun_params("init_policy"),
    group:
        iteration_group
    resources:
        **stage_resources("init_policy"),
    log:
        L.log("{run}/init_policy.log"),
    run:
        from opgrpo_stages.stages.init_policy import init_policy

        with X.rule_log(log[0]):
            init_policy(RUN_CFG[wildcards.run], out_policy=output.policy, out_optimizer=output.optimizer,
                        out_buffer=output.buffer, out_buffer_table=output.buffer_table)


rule rollout:
    input:
        prompts=L.prompts("train"),
        policy=lambda w: L.policy(w.run, K(w) - 1),
        buffer=lambda w: L.buffer(w.run, K(w) - 1),
        embeddings=prompt_embeddings("train"),
    output:
        trajectories=update(L.trajectories("{run}", "{iter}")),
        samples=update(L.samples("{run}", "{iter}")),
        images=update(L.images("{run}", "{iter}")),
    params:
        *rerun_params("rollout"),
    group:
        iteration_group
    log:
        L.log("{run}/iter_{iter}/rollout.log"),
    benchmark:
        L.benchmark("{run}", "{iter}", "rollout")
    threads: workflow.cores
    resources:
        **stage_resources("rollout", data_parallel=True),  # one GPU per rank, distributed.nodes nodes
    run:
        from opgrpo_stages.stages.rollout import rollout

        X.run_stage("rollout", rollout, RUN_CFG[wildcards.run], K(wildcards), dict(
            prompts_path=input.prompts, policy_path=input.policy, buffer_paths=tuple(input.buffer),
            out_trajectories=output.trajectories, out_samples=output.samples, out_images=output.images,
            embeddings_path=first_or_none(input.embeddings)), log[0])
        X.prune(RUN_CFG[wildcards.run], K(wildcards))  # earlier iterations' big files (storage settings)


rule score:
    input:
        images=rules.rollout.output.images,
        samples=rules.rollout.output.samples,
    output:
        rewards=update(L.rewards("{run}", "{iter}")),
    params:
        *rerun_params("score"),
    group:
        iteration_group
    resources:
        **stage_resources("score"),
    log:
        L.log("{run}/iter_{iter}/score.log"),
    benchmark:
        L.benchmark("{run}", "{iter}", "score")
    run:
        from opgrpo_stages.stages.score import score

        X.run_stage("score", score, RUN_CFG[wildcards.run], K(wildcards), dict(
            images_path=input.images, samples_path=input.samples, out_rewards=output.rewards), log[0])


rule buffer_update:
    input:
        buffer=lambda w: L.buffer(w.run, K(w) - 1),
        trajectories=rules.rollout.output.trajectories,
        samples=rules.rollout.output.samples,
        rewards=rules.score.output.rewards,
    output:
        buffer=update(L.buffer("{run}", "{iter}")[0]),
        buffer_table=update(L.buffer("{run}", "{iter}")[1]),
    params:
        *rerun_params("buffer_update"),
    group:
        iteration_group
    resources:
        **stage_resources("buffer_update"),
    log:
        L.log("{run}/iter_{iter}/buffer_update.log"),
    benchmark:
        L.benchmark("{run}", "{iter}", "buffer_update")
    run:
        from opgrpo_stages.stages.buffer_update import buffer_update

        with X.rule_log(log[0]):
            buffer_update(RUN_CFG[wildcards.run], K(wildcards), buffer_paths=tuple(input.buffer),
                          trajectories_path=input.trajectories, samples_path=input.samples,
                          rewards_path=input.rewards, out_buffer=output.buffer, out_buffer_table=output.buffer_table)


rule policy_update:
    input:
        policy=lambda w: L.policy(w.run, K(w) - 1),
        optimizer=lambda w: L.optimizer(w.run, K(w) - 1),
        trajectories=rules.rollout.output.trajectories,
        samples=rules.rollout.output.samples,
        rewards=rules.score.output.rewards,
        embeddings=prompt_embeddings("train"),
    output:
        policy=update(L.policy("{run}", "{iter}")),
        optimizer=update(L.optimizer("{run}", "{iter}")),
        metrics=update(L.metrics("{run}", "{iter}")),
    params:
        *rerun_params("policy_update"),
    group:
        iteration_group
    log:
        L.log("{run}/iter_{iter}/policy_update.log"),
    benchmark:
        L.benchmark("{run}", "{iter}", "policy_update")
    threads: workflow.cores
    resources:
        **stage_resources("policy_update", data_parallel=True),  # one GPU per rank, distributed.nodes nodes
    run:
        from opgrpo_stages.stages.policy_update import policy_update

        X.run_stage("policy_update", policy_update, RUN_CFG[wildcards.run], K(wildcards), dict(
            policy_path=input.policy, optimizer_path=input.optimizer, trajectories_path=input.trajectories,
            samples_path=input.samples, rewards_path=input.rewards, out_policy=output.policy,
            out_optimizer=output.optimizer, out_metrics=output.metrics,
            embeddings_path=first_or_none(input.embeddings)), log[0])


rule evaluate:
    input:
        prompts=L.prompts("heldout"),
        policy=rules.policy_update.output.policy,
        optimizer=rules.policy_update.output.optimizer,
        embeddings=prompt_embeddings("heldout"),
    output:
        table=update(L.eval_table("{run}", "{iter}")),
        grid=update(L.eval_grid("{run}", "{iter}")),
    params:
        *rerun_params("evaluate"),
    group:
        eval_job  # not in the training job: training of the next iterations does not wait for it
    resources:
        **stage_resources("evaluate", data_parallel=True),  # on every rank, as training
    log:
        L.log("{run}/eval_{iter}.log"),
    threads: workflow.cores
    run:
        from opgrpo_stages.stages.evaluate import evaluate_stage

        X.run_stage("evaluate", evaluate_stage, RUN_CFG[wildcards.run], K(wildcards), dict(
            prompts_path=input.prompts, policy_path=input.policy, optimizer_path=input.optimizer,
            out_table=output.table, out_grid=output.grid, embeddings_path=first_or_none(input.embeddings)), log[0])


rule evaluate_base:
    input:
        base_weights,
        prompts=L.prompts("heldout"),
        embeddings=prompt_embeddings("heldout"),
    output:
        table=update(L.eval_table("base", 0)),
        grid=update(L.eval_grid("base", 0)),
    params:
        *rerun_params("evaluate_base", lambda w: RUN_CFG[FIRST]),
    resources:
        **stage_resources("evaluate_base"),  # runtime from the config (cluster.py), on one GPU
    group:
        "base-eval"  # one cluster job with final_eval_base
    log:
        L.log("base/eval.log"),
    threads: workflow.cores
    run:
        from opgrpo_stages.stages.evaluate import evaluate

        with X.rule_log(log[0]):  # once per experiment, on one GPU (its rule asks for one)
            evaluate(RUN_CFG[FIRST], prompts_path=input.prompts, policy_path=None, out_table=output.table,
                     out_grid=output.grid, embeddings_path=first_or_none(input.embeddings))


rule final_eval:  # Table 1/2 metrics of a run's intermediate or best checkpoint (stages/final_eval.py)
    input:
        prompts=L.prompts("heldout"),
        evals=lambda w: [L.eval_table(w.run, k) for k in L.eval_iterations(RUN_CFG[w.run])],
        policies=lambda w: [L.policy(w.run, k) for k in L.eval_iterations(RUN_CFG[w.run])],
        optimizers=lambda w: [L.optimizer(w.run, k) for k in L.eval_iterations(RUN_CFG[w.run])],
        embeddings=prompt_embeddings("heldout"),
        t2i_embeddings=t2i_prompt_embeddings,
    output:
        table=update(L.final_eval("{run}", "{checkpoint}")),
    params:
        *rerun_params("final_eval"),
    resources:
        **stage_resources("final_eval"),  # runtime from the config (cluster.py), on one GPU
    wildcard_constraints:
        checkpoint="intermediate|best",
    group:
        lambda w: eval_job(Namespace(run=w.run, iter=L.eval_iterations(RUN_CFG[w.run])[-1]))  # with the last evaluation
    log:
        L.log("{run}/final_{checkpoint}.log"),
    threads: workflow.cores
    run:
        from opgrpo_stages.stages.final_eval import final_eval, final_eval_paths

        with X.rule_log(log[0]):
            final_eval(RUN_CFG[wildcards.run], **final_eval_paths(RUN_CFG[wildcards.run], wildcards.run,
                                                                  wildcards.checkpoint))


rule final_eval_base:
    input:
        base_weights,
        prompts=L.prompts("heldout"),
        eval=L.eval_table("base", 0),
        embeddings=prompt_embeddings("heldout"),
        t2i_embeddings=t2i_prompt_embeddings,
    output:
        table=update(L.final_eval("base", "base")),
    params:
        *rerun_params("final_eval_base", lambda w: RUN_CFG[FIRST]),
    resources:
        **stage_resources("final_eval_base"),  # runtime from the config (cluster.py), on one GPU
    group:
        "base-eval"
    log:
        L.log("base/final.log"),
    threads: workflow.cores
    run:
        from opgrpo_stages.stages.final_eval import final_eval, final_eval_paths

        with X.rule_log(log[0]):
            final_eval(RUN_CFG[FIRST], **final_eval_paths(RUN_CFG[FIRST], "base", "base"))


def report_inputs(w):
    """Every file the report reads (stages/report.py), so a missing one is regenerated first."""
    from opgrpo_stages.stages.report import final_inputs

    out = {"base": L.eval_table("base", 0), "base_grid": L.eval_grid("base", 0), "final": final_inputs(EXPERIMENTS[w.exp])}
    for r in EXPERIMENTS[w.exp]:
        n, evals = RUN_CFG[r]["train"]["iterations"], L.eval_iterations(RUN_CFG[r])
        out[f"{r}_metrics"] = [L.metrics(r, k) for k in range(n)]
        out[f"{r}_samples"] = [L.samples(r, k) for k in range(n)]
        out[f"{r}_rewards"] = [L.rewards(r, k) for k in range(n)]
        if RUN_CFG[r]["replay"]["fraction"] > 0:  # buffer size, reward and age curves
            out[f"{r}_buffer"] = [L.buffer(r, k)[1] for k in range(n - 1)]
        out[f"{r}_eval"] = [L.eval_table(r, k) for k in evals]
        out[f"{r}_grid"] = L.eval_grid(r, evals[-1])  # the last checkpoint's samples in the grid figure
    return out


rule report:
    input:
        unpack(report_inputs),
    output:
        curves=report(L.results("{exp}") + "/figures/training_curves.png", category="{exp}", subcategory="Training",
                      caption="report/curves.rst"),
        heldout=report(L.results("{exp}") + "/figures/heldout_geneval.png", category="{exp}", subcategory="Held-out",
                       caption="report/heldout.rst"),
        grid=report(L.results("{exp}") + "/figures/samples_base_vs_trained.png", category="{exp}", subcategory="Samples",
                    caption="report/grid.rst"),
        logp=report(L.results("{exp}") + "/figures/logp_per_step.png", category="{exp}", subcategory="Off-policy",
                    caption="report/logp.rst"),
        clip=report(L.results("{exp}") + "/figures/clipped_fraction.png", category="{exp}", subcategory="Off-policy",
                    caption="report/clip.rst"),
        csv=report(L.results("{exp}") + "/tables/results.csv", category="{exp}", subcategory="Tables",
                   caption="report/table.rst"),
        md=L.results("{exp}") + "/tables/results.md",
        speed=report(L.results("{exp}") + "/tables/steps_to_target.csv", category="{exp}", subcategory="Tables",
                     caption="report/speed.rst"),
        table1_csv=report(L.results("{exp}") + "/tables/table1.csv", category="{exp}", subcategory="Tables",
                          caption="report/table1.rst"),
        table1_md=L.results("{exp}") + "/tables/table1.md",
        table2_csv=report(L.results("{exp}") + "/tables/table2.csv", category="{exp}", subcategory="Tables",
                          caption="report/table2.rst"),
        table2_md=L.results("{exp}") + "/tables/table2.md",
        # issue 14: the paper's claims over seeds (opgrpo_stages/report/seeds.py)
        training_curves=L.results("{exp}") + "/tables/training_curves.csv",
        degenerate=report(L.results("{exp}") + "/tables/degenerate_groups.csv", category="{exp}", subcategory="Tables",
                          caption="report/degenerate.rst"),
        headline_csv=report(L.results("{exp}") + "/tables/headline.csv", category="{exp}", subcategory="Tables",
                            caption="report/headline.rst"),
        headline_md=L.results("{exp}") + "/tables/headline.md",
        ablations_csv=report(L.results("{exp}") + "/tables/ablations.csv", category="{exp}", subcategory="Tables",
                             caption="report/ablations.rst"),
        ablations_md=L.results("{exp}") + "/tables/ablations.md",
        ablation_differences=L.results("{exp}") + "/tables/ablation_differences.csv",
        logp_cliff=L.results("{exp}") + "/tables/logp_cliff.csv",
        fig2=report(L.results("{exp}") + "/figures/fig2_logp_cliff.png", category="{exp}", subcategory="Off-policy",
                    caption="report/fig2.rst"),
        fig3=report(L.results("{exp}") + "/figures/fig3_curves.png", category="{exp}", subcategory="Training",
                    caption="report/fig3.rst"),
        fig6a=report(L.results("{exp}") + "/figures/fig6a_ablations.png", category="{exp}", subcategory="Training",
                     caption="report/fig6.rst"),
        fig6b=report(L.results("{exp}") + "/figures/fig6b_replay_fraction.png", category="{exp}", subcategory="Training",
                     caption="report/fig6.rst"),
    params:
        *rerun_params("report", lambda w: config, [config]),  # the `report` section
    wildcard_constraints:
        exp=f"(?!(?:{'|'.join(SPEEDUP_EXPERIMENTS)})$)[^/]+",  # those have rule report_speedup
    log:
        L.log("report_{exp}.log"),
    run:
        from opgrpo_stages.stages.report import report as make_report

        with X.rule_log(log[0]):
            make_report(config, EXPERIMENTS[wildcards.exp], outputs=dict(output), exp=wildcards.exp)


def speedup_report_inputs(w):
    """Every file the speed-up report reads (outputs.speedup_inputs): no final_eval, no sample grid."""
    from opgrpo_stages.report.outputs import speedup_inputs

    return speedup_inputs({r: RUN_CFG[r] for r in EXPERIMENTS[w.exp]})


rule report_speedup:  # the pre-registered speed-up test (docs/speedup.md; opgrpo_stages/report/speedup.py)
    input:
        unpack(speedup_report_inputs),
    output:
        **{k: (report(p, category="{exp}", subcategory="Speed-up", caption="report/speedup.rst") if k == "speedup_fig"
               else p) for k, p in SPEEDUP_OUTPUTS.items()},
    wildcard_constraints:
        exp="|".join(SPEEDUP_EXPERIMENTS),
    params:
        *rerun_params("report", lambda w: config, [config]),
    log:
        L.log("report_{exp}.log"),
    run:
        from opgrpo_stages.stages.report import report as make_report

        with X.rule_log(log[0]):
            make_report(config, EXPERIMENTS[wildcards.exp], outputs=dict(output), exp=wildcards.exp)


rule tensorboard:  # the record of one iteration (or evaluation) of one run: see monitor_files
    input:
        unpack(lambda w: records.train_inputs(w.run, int(w.iter), last=int(w.iter) == last_iter(w.run)) if w.kind == "train"
               else records.heldout_inputs(w.run, int(w.iter))),
    output:
        L.events("{run}", "{kind}", "{iter}"),
    wildcard_constraints:
        kind="train|heldout",
    log:
        L.log("{run}/tensorboard_{kind}_{iter}.log"),
    run:
        from opgrpo_stages.monitor.tensorboard import job_log, log_record

        with job_log(log[0]):
            log_record(cfg_of(wildcards.run), wildcards.run, wildcards.kind, int(wildcards.iter), output[0], dict(input))
