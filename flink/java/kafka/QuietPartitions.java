package riskguard.flink.kafka;

import org.apache.flink.api.common.eventtime.Watermark;
import org.apache.flink.api.common.eventtime.WatermarkGenerator;
import org.apache.flink.api.common.eventtime.WatermarkGeneratorSupplier;
import org.apache.flink.api.common.eventtime.WatermarkOutput;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.types.Row;
import org.apache.flink.util.clock.RelativeClock;

/**
 * A partition's watermark, a millisecond behind its newest event time, that stops
 * holding the job back once the partition goes quiet, and that moves past the newest
 * tick once every partition of the reader is quiet.
 *
 * <p>Flink's {@code withIdleness} gives one timeout for two cases. Before a partition's
 * first message, the timeout must cover a first fetch that comes later than the others'
 * (a slower broker), or that partition's backlog comes late. After a message on a partition
 * that is mostly quiet (an ack, a limit update), the partition holds every other
 * partition's ticks back at that message's time until it is called idle, so there the
 * timeout must be short. This generator keeps the two apart: {@code startMs} of quiet
 * before the first message, {@code quietMs} after one.
 *
 * <p>When every partition is quiet (a feed outage, the end of a replay), an idle source
 * moves no watermark at all, and the records of the newest tick would wait in their
 * window until the next message. So once the reader has heard nothing on any partition
 * for {@code allQuietMs}, each partition that has sent a message sets its watermark to the
 * last ms of the tick ({@code tickMs}) of the newest event time any partition gave: that
 * tick goes on, as bytewax hands records on as they come. A record that then comes in
 * that tick or before is behind the watermark (late), for the flow to judge. A partition
 * that has sent nothing yet keeps waiting {@code startMs}. {@code allQuietMs} is longer
 * than {@code quietMs}: a reader starved of CPU can go a second without a fetch while
 * its partitions still have records, which would then come late; a real lull lasts.
 *
 * <p>A record held far ahead of its partition's time, or a partition's first ({@link
 * LeadGate}), has no event time ({@code Long.MIN_VALUE}): the partition has been heard,
 * but moves no watermark until a record with a time comes (or it is quiet). Once every
 * partition is quiet the watermark passes the tick of such a row's own time, if that is
 * at most the lead past the newest any partition gave (where the tick chain lets it go
 * without a next row).
 *
 * <p>Quiet time is read from Flink's input activity clock, which stops while the source
 * is back-pressured or paused: a partition with a backlog is not called quiet because the
 * job downstream is busy.
 */
final class QuietPartitions implements WatermarkGenerator<Row> {
    /** What the partitions of one reader share: the newest event time and the last time
     * any of them heard a message. A reader calls its generators from its task's one
     * thread. */
    static final class Reader {
        long newest = Long.MIN_VALUE;  // MIN_VALUE: nothing heard yet
        long lastHeard;
        long emitted = Long.MIN_VALUE;  // the highest watermark any partition emitted
        long held = Long.MIN_VALUE;  // the latest ms a held record's tick may start at
    }

    private final RelativeClock clock;
    private final Reader reader;
    private final long startNanos;
    private final long quietNanos;
    private final long allQuietNanos;
    private final long tickMs;
    private final long leadMs;
    private long newest = Long.MIN_VALUE;  // MIN_VALUE: nothing heard yet
    private long lastHeard;
    private boolean heard;
    private boolean idle;

    QuietPartitions(RelativeClock clock, Reader reader, long startMs, long quietMs,
                    long allQuietMs, long tickMs, long leadNs) {
        this.clock = clock;
        this.reader = reader;
        this.startNanos = startMs * 1_000_000L;
        this.quietNanos = quietMs * 1_000_000L;
        this.allQuietNanos = allQuietMs * 1_000_000L;
        this.tickMs = tickMs;
        this.leadMs = Math.floorDiv(leadNs, 1_000_000L);
        this.lastHeard = clock.relativeTimeNanos();
    }

    /** Every partition's generator, its event time given by {@code eventTime}. */
    static WatermarkStrategy<Row> strategy(long startMs, long quietMs, long allQuietMs,
                                           long tickMs, long leadNs,
                                           KafkaIo.EventTime eventTime) {
        return new Strategy(startMs, quietMs, allQuietMs, tickMs, leadNs)
            .withTimestampAssigner(eventTime);
    }

    /** Generators that share a {@link Reader}: a source subtask has its own copy of the
     * strategy, and makes each partition's generator from it. */
    static final class Strategy implements WatermarkStrategy<Row> {
        private final long startMs;
        private final long quietMs;
        private final long allQuietMs;
        private final long tickMs;
        private final long leadNs;
        private transient Reader reader;

        Strategy(long startMs, long quietMs, long allQuietMs, long tickMs, long leadNs) {
            this.startMs = startMs;
            this.quietMs = quietMs;
            this.allQuietMs = allQuietMs;
            this.tickMs = tickMs;
            this.leadNs = leadNs;
        }

        @Override
        public WatermarkGenerator<Row> createWatermarkGenerator(
                WatermarkGeneratorSupplier.Context context) {
            if (reader == null) {
                reader = new Reader();
            }
            return new QuietPartitions(context.getInputActivityClock(), reader, startMs,
                                       quietMs, allQuietMs, tickMs, leadNs);
        }
    }

    @Override
    public void onEvent(Row event, long eventTimeMs, WatermarkOutput output) {
        heard = true;
        lastHeard = clock.relativeTimeNanos();
        reader.lastHeard = lastHeard;
        if (eventTimeMs == Long.MIN_VALUE) {  // held: no time yet
            reader.held = Math.max(reader.held, heldAtMost(event));
        } else {
            newest = Math.max(newest, eventTimeMs);
            reader.newest = Math.max(reader.newest, eventTimeMs);
        }
        if (idle) {
            idle = false;
            output.markActive();
        }
    }

    @Override
    public void onPeriodicEmit(WatermarkOutput output) {
        long now = clock.relativeTimeNanos();
        long silent = now - lastHeard;
        long last = Math.max(reader.newest, reader.held);
        if (heard && last != Long.MIN_VALUE && now - reader.lastHeard >= allQuietNanos) {
            // every partition quiet: past the newest tick
            if (idle) {
                idle = false;
                output.markActive();
            }
            emit(output, (Math.floorDiv(last, tickMs) + 1) * tickMs - 1);
        } else if (silent >= (heard ? quietNanos : startNanos)) {
            if (!idle) {
                idle = true;
                output.markIdle();
            }
        } else if (newest != Long.MIN_VALUE) {
            emit(output, newest - 1);
        }
    }

    /** A held row's own time (ms), if the tick chain's {@code RowTime} may let it go
     * there without a next row (at most the lead past the newest any partition gave);
     * else none ({@code Long.MIN_VALUE}). */
    private long heldAtMost(Row event) {
        long own = Math.floorDiv((Long) ((Row) event.getField(1)).getField(1), 1_000_000L);
        long known = Math.max(Math.max(reader.newest, reader.held),
                              Math.max(reader.emitted + 1, 0));
        return own - leadMs <= known ? own : Long.MIN_VALUE;
    }

    private void emit(WatermarkOutput output, long watermark) {
        output.emitWatermark(new Watermark(watermark));
        reader.emitted = Math.max(reader.emitted, watermark);
    }
}
