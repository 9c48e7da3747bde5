"""Evaluators in their own environments: the scoring protocol (:mod:`.protocol`) and the client
the stages use (:mod:`.client`). The servers live in ``servers/`` at the repository root; this
package never listens on a socket. See docs/evaluators.md.
"""
