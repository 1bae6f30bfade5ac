package riskguard.flink.kafka;

import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.eventtime.WatermarkGenerator;
import org.apache.flink.api.common.eventtime.WatermarkOutput;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.types.Row;
import org.apache.flink.util.clock.RelativeClock;

/**
 * A partition's watermark, a millisecond behind its newest event time, that stops
 * holding the job back once the partition goes quiet.
 *
 * <p>Flink's {@code withIdleness} gives one timeout for two cases. Before a partition's
 * first message, the timeout must cover a first fetch that comes later than the others'
 * (a slower broker), or that partition's backlog comes late. After a message on a partition
 * that is mostly quiet (an ack, a limit update), the partition holds every other
 * partition's ticks back at that message's time until it is called idle, so there the
 * timeout must be short. This generator keeps the two apart: {@code startMs} of quiet
 * before the first message, {@code quietMs} after one.
 *
 * <p>Quiet time is read from Flink's input activity clock, which stops while the source
 * is back-pressured or paused: a partition with a backlog is not called quiet because the
 * job downstream is busy.
 */
final class QuietPartitions implements WatermarkGenerator<Row> {
    private final RelativeClock clock;
    private final long startNanos;
    private final long quietNanos;
    private long newest = Long.MIN_VALUE;  // MIN_VALUE: nothing heard yet
    private long lastHeard;
    private boolean idle;

    QuietPartitions(RelativeClock clock, long startMs, long quietMs) {
        this.clock = clock;
        this.startNanos = startMs * 1_000_000L;
        this.quietNanos = quietMs * 1_000_000L;
        this.lastHeard = clock.relativeTimeNanos();
    }

    /** Every partition's generator, its event time given by {@code eventTime}. */
    static WatermarkStrategy<Row> strategy(long startMs, long quietMs,
                                           KafkaIo.EventTime eventTime) {
        WatermarkStrategy<Row> quiet = context ->
            new QuietPartitions(context.getInputActivityClock(), startMs, quietMs);
        return quiet.withTimestampAssigner(eventTime);
    }

    @Override
    public void onEvent(Row event, long eventTimeMs, WatermarkOutput output) {
        newest = Math.max(newest, eventTimeMs);
        lastHeard = clock.relativeTimeNanos();
        if (idle) {
            idle = false;
            output.markActive();
        }
    }

    @Override
    public void onPeriodicEmit(WatermarkOutput output) {
        boolean heard = newest != Long.MIN_VALUE;
        long silent = clock.relativeTimeNanos() - lastHeard;
        if (silent >= (heard ? quietNanos : startNanos)) {
            if (!idle) {
                idle = true;
                output.markIdle();
            }
        } else if (heard) {
            output.emitWatermark(new Watermark(newest - 1));
        }
    }
}
