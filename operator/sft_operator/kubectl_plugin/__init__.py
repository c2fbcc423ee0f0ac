"""`kubectl sft`: the daily verbs for SFTJobs (installed as the `kubectl-sft` console script).

    kubectl sft status JOB            phase, progress, metrics, checkpoint, final model, last failure
    kubectl sft logs JOB [-f]         every rank's pod log, each line prefixed `[node-<rank>]`
    kubectl sft suspend JOB           spec.runPolicy.suspend=true (pods go, checkpoints stay)
    kubectl sft resume JOB            spec.runPolicy.suspend=false (resumes from the newest checkpoint)
    kubectl sft generate JOB -p TEXT  `sft generate` on status.finalModel, locally when its volume
                                      is reachable here, else prints the kubectl command for a Job

kubectl finds the plugin on PATH by its name; `-n/--namespace`, `--kubeconfig` and `--context` work
as in kubectl. Errors end in one line and a `PluginExit` code (docs/user-guide.md, "kubectl sft").

The package, by role: `text` (the status and log text, pure), `generation` (the `sft generate`
command line and the generation Job, pure), `cluster` (the Kubernetes API calls and their errors),
`commands` (the Typer verbs: thin calls to the other three). What the operator already decides is
reused, not rewritten: exit codes and their meaning from `sft_trainer.contract`, a pod's rank and
attempt from `status.pod_view`, storage volumes from `render.storage_volume`. No torch import: this
package is part of the operator; `generate` runs the trainer's `sft` command as a separate process.
"""
