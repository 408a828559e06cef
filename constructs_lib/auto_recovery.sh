#!/bin/sh
# auto-recovery: restart crash-looping Deployments, and add a replica to a
# Deployment whose containers run close to their memory limit.
#
# constructs_lib/auto_recovery.py ships this script in a ConfigMap and runs
# it from a CronJob in the kubectl 1.27 image, whose /bin/sh is dash and
# whose awk is mawk: it uses POSIX sh, awk, cat, date, mktemp, rm, sort and
# kubectl, nothing else. It reads each namespace in NAMESPACES with one list
# call per kind (never across namespaces, so a Role in each namespace is all
# it needs), decides everything in one awk program, and only then acts.
#
# Environment (the construct sets every variable from its settings):
#   NAMESPACES                namespaces to watch and act in, space-separated
#   DRY_RUN                   "true": log what would be done, change nothing
#   UNHEALTHY_THRESHOLD       restart only while more pods than this, over
#                             all NAMESPACES, are unhealthy
#   MEMORY_THRESHOLD_PERCENT  add a replica when a container uses more than
#                             this share of its memory limit
#   MAX_REPLICAS              never scale a Deployment above this
#   RESTART_COOLDOWN_SECONDS  do not restart a Deployment restarted (by this
#                             job or anyone) less than this long ago
#   SCALE_COOLDOWN_SECONDS    do not scale a Deployment this job scaled less
#                             than this long ago, as recorded in its
#                             monitoring.sunday.com/auto-recovery-scaled-at
#                             annotation (a blocked replica adds no pod, so
#                             pod ages cannot tell)
#   MAX_RESTARTS_PER_RUN      restart at most this many Deployments per run
#   MAX_SCALES_PER_RUN        scale at most this many Deployments per run
#
# What counts:
#   unhealthy  a pod of a Deployment in NAMESPACES (owned by a ReplicaSet the
#              Deployment owns) whose ReplicaSet is current (replicas > 0),
#              and that either has a container (init or not) waiting in
#              CrashLoopBackOff, or is Failed for a reason other than
#              Evicted, Shutdown, NodeShutdown, Terminated, NodeAffinity or
#              OutOfpods. Those reasons mean the node or the kubelet removed
#              or refused the pod; its ReplicaSet has already made a
#              replacement, and a restart cannot help. Pending pods, pods of
#              old ReplicaSets, of Jobs, StatefulSets or no owner are not
#              counted. A Deployment is restarted only while it has such pods.
#   hot        a container using more than MEMORY_THRESHOLD_PERCENT of its
#              memory limit, usage from the metrics API (metrics-server),
#              both sides converted to bytes; a container without a memory
#              limit has nothing to compare against and is left alone
#
# Every decision is one line on stdout, reason last. A restartedAt or
# scaled-at annotation that is not an RFC 3339 time is treated as absent,
# and one more than FUTURE_TOLERANCE_SECONDS (5m) ahead of now is ignored
# (it would otherwise block that Deployment for ever); either gets a warning
# line when it is consulted:
#   auto-recovery: restart namespace=N deployment=D before="revision 4"
#     after="revision 5" reason="..."
#   auto-recovery: scale namespace=N deployment=D before=3 after=4 reason="..."
#   auto-recovery: dry-run: would scale namespace=N deployment=D before=3 ...
#   auto-recovery: skip scale namespace=N deployment=D replicas=10 reason="..."
#   auto-recovery: skip restart namespace=N deployment=D replicas=3
#     reason="skipped: limit reached (3 restarts per run); ..."
#   auto-recovery: warning namespace=N deployment=D replicas=3 reason="..."
#   auto-recovery: done namespaces="a b" unhealthy=7 restarted=1 scaled=1 ...
# and every failure is one line on stderr:
#   auto-recovery: error: kubectl get pods -n N failed (exit 1): <kubectl's message>
#
# Exit status: 0 when everything was read and every action succeeded, 1 when
# a kubectl call failed, 2 when the environment is invalid. A failed read of
# pods, ReplicaSets, Deployments or HorizontalPodAutoscalers stops the run
# before any action: half a picture could restart or scale what the whole
# one would leave alone. A failed read of the metrics API only skips the
# memory check in that namespace; restarts do not depend on metrics-server.
set -u
# Namespaces are split on spaces, never expanded as file names.
set -f

TAB=$(printf '\t')
# Each call gives up after this, so a hung API server cannot hold the job
# past its activeDeadlineSeconds with nothing logged.
REQUEST_TIMEOUT=20s
# Written on a Deployment each time the job scales it; the scale cooldown
# reads it.
SCALED_AT=monitoring.sunday.com/auto-recovery-scaled-at
# A recorded time at most this far in the future is believed (clock skew);
# a later one is ignored.
FUTURE_TOLERANCE_SECONDS=300

log() {
    printf 'auto-recovery: %s\n' "$*"
}

error() {
    printf 'auto-recovery: error: %s\n' "$*" >&2
}

config_error() {
    error "$1"
    exit 2
}

whole_number() {
    case $2 in
        '' | *[!0-9]*) config_error "$1 must be a whole number, not '$2'" ;;
    esac
}

whole_number UNHEALTHY_THRESHOLD "${UNHEALTHY_THRESHOLD-}"
whole_number MEMORY_THRESHOLD_PERCENT "${MEMORY_THRESHOLD_PERCENT-}"
whole_number MAX_REPLICAS "${MAX_REPLICAS-}"
whole_number RESTART_COOLDOWN_SECONDS "${RESTART_COOLDOWN_SECONDS-}"
whole_number SCALE_COOLDOWN_SECONDS "${SCALE_COOLDOWN_SECONDS-}"
whole_number MAX_RESTARTS_PER_RUN "${MAX_RESTARTS_PER_RUN-}"
whole_number MAX_SCALES_PER_RUN "${MAX_SCALES_PER_RUN-}"
case ${DRY_RUN-} in
    true | false) ;;
    *) config_error "DRY_RUN must be 'true' or 'false', not '${DRY_RUN-}'" ;;
esac
# shellcheck disable=SC2086 # split on purpose: one word per namespace
set -- ${NAMESPACES-}
[ "$#" -gt 0 ] || config_error "NAMESPACES is empty; name the namespaces to act in"
for ns in "$@"; do
    case $ns in
        *[!a-z0-9-]*) config_error "namespace '$ns' in NAMESPACES is not a DNS label" ;;
    esac
done

work=$(mktemp -d) || {
    error "cannot create a temporary directory (is /tmp writable?)"
    exit 1
}
trap 'rm -rf "$work"' EXIT
trap 'exit 143' TERM INT HUP

# kubectl's message, on one line and short enough to read in a log.
message() {
    awk '{ text = text sep $0; sep = " " } END { print substr(text, 1, 400) }' "$1"
}

# One list call per namespace and kind, its output appended to a file.
read_list() { # file namespace resource template
    kubectl --request-timeout="$REQUEST_TIMEOUT" get "$3" -n "$2" \
        -o "jsonpath=$4" >"$work/out" 2>"$work/err" </dev/null
    status=$?
    if [ "$status" -ne 0 ]; then
        error "kubectl get $3 -n $2 failed (exit $status): $(message "$work/err")"
        return 1
    fi
    cat "$work/out" >>"$1"
}

# One change; its failure is logged by the caller with what it was for.
act() {
    kubectl --request-timeout="$REQUEST_TIMEOUT" "$@" \
        >"$work/out" 2>"$work/err" </dev/null
    status=$?
    [ "$status" -eq 0 ]
}

# Each template prints one object per line: tab-separated fields, the
# namespace first. Several values of one field (two owners, two waiting
# containers) print separated by spaces. Only spec.containers, which the
# API server never lets be empty, is iterated with a nested range.
REPLICASET_TEMPLATE='{range .items[*]}'\
'{.metadata.namespace}{"\t"}{.metadata.name}{"\t"}'\
'{.metadata.ownerReferences[*].kind}{"\t"}{.metadata.ownerReferences[*].name}{"\t"}'\
'{.spec.replicas}{"\n"}{end}'
DEPLOYMENT_TEMPLATE='{range .items[*]}'\
'{.metadata.namespace}{"\t"}{.metadata.name}{"\t"}{.spec.replicas}{"\t"}'\
'{.metadata.annotations.deployment\.kubernetes\.io/revision}{"\t"}'\
'{.spec.template.metadata.annotations.kubectl\.kubernetes\.io/restartedAt}{"\t"}'\
'{.spec.paused}{"\t"}'\
'{.metadata.annotations.monitoring\.sunday\.com/auto-recovery-scaled-at}{"\n"}{end}'
HPA_TEMPLATE='{range .items[*]}'\
'{.metadata.namespace}{"\t"}{.metadata.name}{"\t"}'\
'{.spec.scaleTargetRef.kind}{"\t"}{.spec.scaleTargetRef.name}{"\n"}{end}'
POD_TEMPLATE='{range .items[*]}'\
'{.metadata.namespace}{"\t"}{.metadata.name}{"\t"}{.status.phase}{"\t"}'\
'{.status.reason}{"\t"}{.metadata.deletionTimestamp}{"\t"}'\
'{.metadata.ownerReferences[*].kind}{"\t"}{.metadata.ownerReferences[*].name}{"\t"}'\
'{.status.containerStatuses[*].state.waiting.reason} '\
'{.status.initContainerStatuses[*].state.waiting.reason}{"\t"}'\
'{range .spec.containers[*]}{.name}={.resources.limits.memory}{" "}{end}{"\n"}{end}'
METRICS_TEMPLATE='{range .items[*]}'\
'{.metadata.namespace}{"\t"}{.metadata.name}{"\t"}'\
'{.containers[*].name}{"\t"}{.containers[*].usage.memory}{"\n"}{end}'

# Reads the five files above, in that order, and prints the plan: one line
# per decision, tab-separated, no field empty (the shell's read would merge
# two tabs): kind, namespace, deployment, replicas, before, after, reason.
# Kinds: restart, scale, skip-restart, skip-scale, warning. It also writes
# the count of unhealthy pods to unhealthy_file.
# shellcheck disable=SC2016 # an awk program: its $1 is awk's, not the shell's
PLAN_PROGRAM='
BEGIN { FS = "\t"; OFS = "\t" }

# Seconds since the epoch of an RFC 3339 time, or -1. The API server writes
# UTC ("Z"); kubectl rollout restart writes the local time of whoever ran it,
# with an offset. Days from the civil date follow H. Hinnant days_from_civil,
# which needs no time zone support from awk.
function epoch(ts,    y, m, d, secs, rest, off, era, yoe, doy, doe) {
    # mawk has no {n} repetition in regular expressions.
    if (ts !~ /^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T/ ||
        substr(ts, 11) !~ /^T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]/)
        return -1
    y = substr(ts, 1, 4) + 0; m = substr(ts, 6, 2) + 0; d = substr(ts, 9, 2) + 0
    # Fields out of range make it malformed, not a time to compute with.
    if (m < 1 || m > 12 || d < 1 || d > 31 || substr(ts, 12, 2) + 0 > 23 ||
        substr(ts, 15, 2) + 0 > 59 || substr(ts, 18, 2) + 0 > 60)
        return -1
    secs = substr(ts, 12, 2) * 3600 + substr(ts, 15, 2) * 60 + substr(ts, 18, 2)
    rest = substr(ts, 20)
    sub(/^\.[0-9]+/, "", rest)
    if (rest ~ /^[+-][0-9][0-9]:[0-9][0-9]$/) {
        if (substr(rest, 2, 2) + 0 > 23 || substr(rest, 5, 2) + 0 > 59) return -1
        off = substr(rest, 2, 2) * 3600 + substr(rest, 5, 2) * 60
        if (substr(rest, 1, 1) == "+") secs -= off; else secs += off
    } else if (rest != "Z") {
        return -1
    }
    if (m <= 2) y -= 1
    era = int(y / 400)
    yoe = y - era * 400
    doy = int((153 * (m > 2 ? m - 3 : m + 9) + 2) / 5) + d - 1
    doe = yoe * 365 + int(yoe / 4) - int(yoe / 100) + doy
    return (era * 146097 + doe - 719468) * 86400 + secs
}

# Bytes of a Kubernetes quantity ("512Mi", "1Gi", "25348Ki", "1G", "1e9"),
# or -1 when it is empty or not a quantity.
function bytes(q,    n, unit) {
    n = q; unit = ""
    if (match(q, /[KMGTPE]i$/) || match(q, /[kmMGTPE]$/)) {
        unit = substr(q, RSTART); n = substr(q, 1, RSTART - 1)
    }
    if (n !~ /^[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?$/) return -1
    return n * scale[unit]
}

function plan(kind, ns, deployment, before, after, reason,    key) {
    key = ns SUBSEP deployment
    print kind, ns, deployment, (key in known) ? replicas[key] : "-", before, after,
        reason
}

# The time recorded in a Deployment annotation, or -1 when there is none to
# go by: absent, not an RFC 3339 time, or more than future_tolerance seconds
# ahead of now (which would hold the Deployment back for ever). The last two
# are logged.
function recorded(value, what, ns, deployment,    t) {
    if (value == "") return -1
    t = epoch(value)
    if (t < 0) {
        plan("warning", ns, deployment, "-", "-", what " " value " is not " \
            "an RFC 3339 time; treated as absent, so no cooldown applies")
        return -1
    }
    if (t > now + future_tolerance) {
        plan("warning", ns, deployment, "-", "-", what " " value " is " \
            (t - now) "s in the future, more than " future_tolerance "s; ignored")
        return -1
    }
    return t
}

BEGIN {
    scale[""] = 1; scale["m"] = 0.001
    scale["k"] = 1e3; scale["M"] = 1e6; scale["G"] = 1e9
    scale["T"] = 1e12; scale["P"] = 1e15; scale["E"] = 1e18
    scale["Ki"] = 1024; scale["Mi"] = 1024 ^ 2; scale["Gi"] = 1024 ^ 3
    scale["Ti"] = 1024 ^ 4; scale["Pi"] = 1024 ^ 5; scale["Ei"] = 1024 ^ 6
    unhealthy = 0
    # Failed pods the node or kubelet removed or refused: their ReplicaSet
    # has replaced them already, and a restart cannot help.
    split("Evicted Shutdown NodeShutdown Terminated NodeAffinity OutOfpods",
        reasons, " ")
    for (i in reasons) replaced[reasons[i]] = 1
}

NF == 0 { next }

# namespace, name, owner kinds, owner names, replicas
FILENAME == replicaset_file {
    key = $1 SUBSEP $2
    replicaset_replicas[key] = $5 + 0
    owners = split($3, kinds, " "); split($4, names, " ")
    for (i = 1; i <= owners; i++)
        if (kinds[i] == "Deployment") replicaset_deployment[key] = names[i]
    next
}

# namespace, name, replicas, revision, restartedAt, paused, scaled-at
FILENAME == deployment_file {
    key = $1 SUBSEP $2
    known[key] = 1
    replicas[key] = $3 + 0
    revision[key] = $4
    restarted_at[key] = $5
    paused[key] = $6
    scaled_at[key] = $7
    next
}

# namespace, name, target kind, target name
FILENAME == hpa_file {
    if ($3 == "Deployment") autoscaler[$1 SUBSEP $4] = $2
    next
}

# namespace, name, phase, phase reason, deleting, owner kinds, owner names,
# waiting reasons, container=limit pairs
FILENAME == pod_file {
    if ($5 != "") next
    ns = $1; pod = $2; phase = $3; pod_reason = $4
    crashloop = (" " $8 " " ~ / CrashLoopBackOff /)
    failed = (phase == "Failed" && !(pod_reason in replaced))
    replicaset = ""
    owners = split($6, kinds, " "); split($7, names, " ")
    for (i = 1; i <= owners; i++)
        if (kinds[i] == "ReplicaSet") replicaset = names[i]
    deployment = ""
    if (replicaset != "") deployment = replicaset_deployment[ns SUBSEP replicaset]
    if (deployment != "") {
        key = ns SUBSEP deployment
        pod_deployment[ns SUBSEP pod] = deployment
        if ((failed || crashloop) && replicaset_replicas[ns SUBSEP replicaset] > 0) {
            unhealthy++
            failing[key]++
            if (failing[key] <= 3)
                failing_pods[key] = failing_pods[key] (failing[key] > 1 ? ", " : "") \
                    pod " (" (crashloop ? "CrashLoopBackOff" : "Failed" \
                    (pod_reason != "" ? ": " pod_reason : "")) ")"
        }
    }
    containers = split($9, pairs, " ")
    for (i = 1; i <= containers; i++) {
        eq = index(pairs[i], "=")
        name = substr(pairs[i], 1, eq - 1)
        limit[ns SUBSEP pod SUBSEP name] = substr(pairs[i], eq + 1)
    }
    next
}

# namespace, pod, container names, memory usages
FILENAME == metrics_file {
    ns = $1; pod = $2
    count = split($3, names, " ")
    if (split($4, usages, " ") != count) next
    for (i = 1; i <= count; i++) {
        capacity = bytes(limit[ns SUBSEP pod SUBSEP names[i]])
        used = bytes(usages[i])
        if (capacity <= 0 || used < 0) continue
        percent = used * 100 / capacity
        if (percent <= memory_threshold) continue
        reason = sprintf("pod %s container %s uses %.1f%% of its memory limit " \
            "(%dMi of %dMi, threshold %d%%)", pod, names[i], percent,
            used / 1048576, capacity / 1048576, memory_threshold)
        deployment = pod_deployment[ns SUBSEP pod]
        if (deployment == "") {
            plan("skip-scale", ns, "-", "-", "-",
                reason "; not managed by a Deployment")
            continue
        }
        key = ns SUBSEP deployment
        if (percent > hottest[key]) { hottest[key] = percent; hot_reason[key] = reason }
    }
    next
}

END {
    for (key in failing) {
        split(key, part, SUBSEP)
        reason = failing[key] " failing pod(s): " failing_pods[key] \
            (failing[key] > 3 ? ", ..." : "")
        current = (key in known) ? replicas[key] : "-"
        if (unhealthy <= unhealthy_threshold) {
            plan("skip-restart", part[1], part[2], current, current,
                unhealthy " unhealthy pod(s), restarts start above " \
                unhealthy_threshold "; " reason)
            continue
        }
        if (!(key in known)) {
            plan("skip-restart", part[1], part[2], "-", "-",
                "Deployment not found; " reason)
            continue
        }
        if (paused[key] == "true") {
            plan("skip-restart", part[1], part[2], current, current,
                "Deployment is paused; " reason)
            continue
        }
        last = recorded(restarted_at[key], "restartedAt", part[1], part[2])
        if (last >= 0 && now - last < restart_cooldown)
            plan("skip-restart", part[1], part[2], current, current,
                "restarted at " restarted_at[key] ", within the cooldown of " \
                restart_cooldown "s; " reason)
        else if (revision[key] == "")
            plan("restart", part[1], part[2], "-", "-",
                unhealthy " unhealthy pod(s), above " unhealthy_threshold "; " reason)
        else
            plan("restart", part[1], part[2], revision[key], revision[key] + 1,
                unhealthy " unhealthy pod(s), above " unhealthy_threshold "; " reason)
    }
    for (key in hottest) {
        split(key, part, SUBSEP)
        current = replicas[key]
        if (!(key in known)) {
            plan("skip-scale", part[1], part[2], "-", "-",
                "Deployment not found; " hot_reason[key])
            continue
        }
        if (key in autoscaler) {
            plan("skip-scale", part[1], part[2], current, current,
                "scaled by HorizontalPodAutoscaler " autoscaler[key] "; " \
                hot_reason[key])
            continue
        }
        if (current + 1 > max_replicas) {
            plan("skip-scale", part[1], part[2], current, current,
                "at the cap of " max_replicas " replicas; " hot_reason[key])
            continue
        }
        last = recorded(scaled_at[key], "scaled-at", part[1], part[2])
        if (last >= 0 && now - last < scale_cooldown)
            plan("skip-scale", part[1], part[2], current, current,
                "scaled at " scaled_at[key] ", within the cooldown of " \
                scale_cooldown "s; " hot_reason[key])
        else
            plan("scale", part[1], part[2], current, current + 1, hot_reason[key])
    }
    print unhealthy > unhealthy_file
}
'

for kind in replicasets deployments hpas pods metrics; do
    : >"$work/$kind"
done
read_failed=
for ns in "$@"; do
    read_list "$work/replicasets" "$ns" replicasets "$REPLICASET_TEMPLATE" || exit 1
    read_list "$work/deployments" "$ns" deployments "$DEPLOYMENT_TEMPLATE" || exit 1
    read_list "$work/hpas" "$ns" horizontalpodautoscalers "$HPA_TEMPLATE" || exit 1
    read_list "$work/pods" "$ns" pods "$POD_TEMPLATE" || exit 1
    if ! read_list "$work/metrics" "$ns" pods.metrics.k8s.io "$METRICS_TEMPLATE"; then
        read_failed=1
        log "memory check skipped in namespace $ns: the metrics API did not answer"
    fi
done

awk -v now="$(date -u +%s)" -v future_tolerance="$FUTURE_TOLERANCE_SECONDS" \
    -v unhealthy_threshold="$UNHEALTHY_THRESHOLD" \
    -v memory_threshold="$MEMORY_THRESHOLD_PERCENT" \
    -v max_replicas="$MAX_REPLICAS" \
    -v restart_cooldown="$RESTART_COOLDOWN_SECONDS" \
    -v scale_cooldown="$SCALE_COOLDOWN_SECONDS" \
    -v replicaset_file="$work/replicasets" -v deployment_file="$work/deployments" \
    -v hpa_file="$work/hpas" -v pod_file="$work/pods" \
    -v metrics_file="$work/metrics" -v unhealthy_file="$work/unhealthy" \
    "$PLAN_PROGRAM" "$work/replicasets" "$work/deployments" "$work/hpas" \
    "$work/pods" "$work/metrics" >"$work/plan" || {
    error "the decision step (awk) failed; nothing was changed"
    exit 1
}
# Sorted, so the log reads the same whatever order awk kept its arrays in.
LC_ALL=C sort "$work/plan" >"$work/plan.sorted"

restarted=0
scaled=0
skipped=0
failed=0
# Attempts, failed ones included, counted against the per-run limits.
restarts_tried=0
scales_tried=0
mode=
[ "$DRY_RUN" = true ] && mode="dry-run: would "
while IFS=$TAB read -r kind ns deployment replicas before after reason; do
    target="namespace=$ns deployment=$deployment"
    case $kind in
        restart)
            line="restart $target before=\"revision $before\""
            line="$line after=\"revision $after\" reason=\"$reason\""
            if [ "$restarts_tried" -ge "$MAX_RESTARTS_PER_RUN" ]; then
                log "skip restart $target replicas=$replicas reason=\"skipped:" \
                    "limit reached ($MAX_RESTARTS_PER_RUN restarts per run); $reason\""
                skipped=$((skipped + 1))
                continue
            fi
            restarts_tried=$((restarts_tried + 1))
            if [ "$DRY_RUN" = true ]; then
                log "$mode$line"
                restarted=$((restarted + 1))
            elif act rollout restart "deployment/$deployment" -n "$ns"; then
                log "$line"
                restarted=$((restarted + 1))
            else
                error "$line failed (kubectl exit $status): $(message "$work/err")"
                failed=$((failed + 1))
            fi
            ;;
        scale)
            line="scale $target before=$before after=$after reason=\"$reason\""
            if [ "$scales_tried" -ge "$MAX_SCALES_PER_RUN" ]; then
                log "skip scale $target replicas=$replicas reason=\"skipped:" \
                    "limit reached ($MAX_SCALES_PER_RUN scales per run); $reason\""
                skipped=$((skipped + 1))
                continue
            fi
            scales_tried=$((scales_tried + 1))
            if [ "$DRY_RUN" = true ]; then
                log "$mode$line"
                scaled=$((scaled + 1))
            # The time is recorded first: a scale is never made without it,
            # and one that then fails still waits out the cooldown.
            elif ! act annotate "deployment/$deployment" -n "$ns" --overwrite \
                "$SCALED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; then
                error "$line failed: could not record $SCALED_AT (kubectl exit" \
                    "$status): $(message "$work/err")"
                failed=$((failed + 1))
            # --current-replicas makes the API server refuse the change if
            # someone else scaled the Deployment since it was read.
            elif act scale "deployment/$deployment" -n "$ns" \
                --current-replicas="$before" --replicas="$after"; then
                log "$line"
                scaled=$((scaled + 1))
            else
                error "$line failed (kubectl exit $status): $(message "$work/err")"
                failed=$((failed + 1))
            fi
            ;;
        skip-*)
            log "skip ${kind#skip-} $target replicas=$replicas reason=\"$reason\""
            skipped=$((skipped + 1))
            ;;
        warning)
            log "warning $target replicas=$replicas reason=\"$reason\""
            ;;
    esac
done <"$work/plan.sorted"

log "done namespaces=\"$*\" unhealthy=$(cat "$work/unhealthy")" \
    "restarted=$restarted scaled=$scaled skipped=$skipped failed=$failed" \
    "dry_run=$DRY_RUN"
[ "$failed" -eq 0 ] && [ -z "$read_failed" ]
