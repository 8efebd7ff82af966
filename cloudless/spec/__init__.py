"""Workload manifests (being split by concern: see the next commit)."""

from cloudless.spec.issues import *  # noqa: F403
from cloudless.spec.issues import LabelSelector as LabelSelector
from cloudless.spec.issues import MatchExpression as MatchExpression
from cloudless.spec.issues import WorkloadAffinity as WorkloadAffinity
from cloudless.spec.issues import audience_problem as audience_problem
from cloudless.spec.issues import is_dns_subdomain as is_dns_subdomain
from cloudless.spec.issues import is_secret_key as is_secret_key
from cloudless.spec.issues import label_problems as label_problems
