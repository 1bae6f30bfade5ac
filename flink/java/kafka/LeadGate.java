package riskguard.flink.kafka;

import riskguard.flink.TickBatches;

/**
 * One partition's gate on records far ahead of its time, the rule of the guard's
 * admission ({@code schemas/time_policy.py}): a record more than {@code leadNs} ahead of
 * the highest time the partition has given (or a partition's first) is held until the
 * partition's next timed record judges it. Far behind it, the held record was a lone bad
 * time and never counts; otherwise it was a genuine jump and counts from then on.
 *
 * <p>A held record's time is not yet known, so its row goes on with the time of the row
 * before it on the partition (right after that row, before the next one), or
 * {@link TickBatches#HELD} for a partition's first: it moves no watermark and opens no
 * tick at the far time, and the flow's admission, which judges it, sees the partition's
 * records in their order. {@code leadNs} 0 holds nothing. Kept per partition by the
 * reader; not checkpointed (after a restore a partition's first record is held again).
 */
final class LeadGate {
    private final long leadNs;
    private long highest = -1;  // -1: no time yet
    private long held = -1;  // the held record's time; -1: none held
    private long before = TickBatches.HELD;  // the time the row before went on with

    LeadGate(long leadNs) {
        this.leadNs = leadNs;
    }

    /** The time the row of a record of time {@code ts} (ns, from 0) goes on with. */
    long timeFor(long ts) {
        if (held >= 0) {
            if (ts >= held - leadNs) {  // the next goes on from it: a genuine jump
                highest = Math.max(highest, held);
            }
            held = -1;
        }
        if (leadNs > 0 && (highest < 0 || ts - leadNs > highest)) {
            held = ts;
            return before;
        }
        highest = Math.max(highest, ts);
        before = ts;
        return ts;
    }
}
