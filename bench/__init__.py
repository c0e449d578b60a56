"""Benchmarks against peers measured in the same run. Every script here owns its process, so importing the
package configures it as the CLI and the pipeline's tasks do (rqvae.threads: passive OpenMP wait and the usable
thread count, set before torch loads); child processes started with `python -c` do the same in their code."""

from rqvae import threads

threads.configure()
