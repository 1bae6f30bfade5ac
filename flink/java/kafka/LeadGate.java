package riskguard.flink.kafka;

/**
 * One partition's gate on records far ahead of its time, the rule of the guard's
 * admission ({@code schemas/time_policy.py}): a record more than {@code leadNs} ahead of
 * the highest time the partition has given (or a partition's first) is held until the
 * partition's next timed record judges it. Far behind it, the held record was a lone bad
 * time and never counts; otherwise it was a genuine jump and counts from then on. A held
 * record has no event time ({@code riskguard.flink.TickBatches#HELD}): it moves no
 * watermark and opens no tick at the far time. Kept per partition by the reader; not
 * checkpointed (after a restore a partition's first record is held again).
 */
final class LeadGate {
    private final long leadNs;
    private long highest = -1;  // -1: no time yet
    private long held = -1;  // the held record's time; -1: none held

    LeadGate(long leadNs) {
        this.leadNs = leadNs;
    }

    /** Whether a record of time {@code ts} (ns, from 0) is held; judges the one held. */
    boolean holds(long ts) {
        if (held >= 0) {
            if (ts >= held - leadNs) {  // the next goes on from it: a genuine jump
                highest = Math.max(highest, held);
            }
            held = -1;
        }
        if (highest < 0 || ts - leadNs > highest) {
            held = ts;
            return true;
        }
        highest = Math.max(highest, ts);
        return false;
    }
}
