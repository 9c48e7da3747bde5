"""opgrpo: off-policy GRPO (OP-GRPO) post-training of flow-matching generators.

Each pipeline stage is a plain function from input files to output files
(``opgrpo_stages.stages``); one module under ``opgrpo_stages.formats`` owns each
file format. Heavy imports (torch, diffusers) stay lazy so that importing the
package is cheap.
"""

__version__ = "0.1.0"
