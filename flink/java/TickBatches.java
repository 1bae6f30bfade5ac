package riskguard.flink;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.api.common.state.ListState;
import org.apache.flink.api.common.state.ListStateDescriptor;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.metrics.Counter;
import org.apache.flink.runtime.state.StateInitializationContext;
import org.apache.flink.runtime.state.StateSnapshotContext;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.datastream.SingleOutputStreamOperator;
import org.apache.flink.streaming.api.functions.windowing.ProcessWindowFunction;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.windowing.assigners.TumblingEventTimeWindows;
import org.apache.flink.streaming.api.windowing.windows.TimeWindow;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;

/**
 * A keyed stream of rows as one row per key and tick of event time, made in Java.
 *
 * <p>Each input is {@code (key, (port, ts, src, pos, bytes))}: a segment key and a row
 * whose {@code ts} (ns) is its event time. A tumbling event-time window a tick long holds
 * a key's rows; when the watermark passes the tick the window hands them on at once, in
 * event time, then source and position order, as {@code (key, (tick_end_ms, false,
 * packed))}. A row whose tick the watermark has already passed is late: {@link RowTime}
 * puts it in the window of the newest event time its subtask has seen (or, past that,
 * the first window the watermark has not passed), and it goes on after that window's
 * rows, alone,
 * as {@code (key, (its own tick_end_ms, true, packed))}. So the rows that came before
 * it, which made it late, reach the flow first, in the input's order, as bytewax hands
 * them on, and the flow's lateness rules judge it against them; late rows are the
 * flow's to judge, never dropped. {@code packed} is the tick as MessagePack bytes,
 * {@code [tick_end_ms, [[port, ts, src, pos, bytes], ...]]} ({@link Packed}): Python
 * decodes a tick in one call, where a nested row costs it a decode a field, and keeps
 * those bytes as they are in its state. A row without {@code ts} takes the latest
 * {@code ts} a timed port carried before it on this subtask. A row whose {@code ts} is
 * past the event time its source gave it (a source that caps how far ahead of its
 * clock a message may be) goes in that time's tick, for the flow to judge at once, not
 * when its own time comes. A row its source stamped {@link #HELD} waits for the next row
 * of its source and goes on just before it ({@link RowTime}). Ticks are whole ms of
 * event time from the epoch, floored: a time before it (which no record may have) is in
 * the tick that holds it.
 */
public final class TickBatches {
    private TickBatches() {}

    /**
     * The event time a source gives a row whose time it holds back until the next row of
     * its source judges it (a Kafka record far ahead of its partition's time, or a
     * partition's first: {@code kafka/LeadGate}): it moves no watermark, and {@link
     * RowTime} holds the row until then.
     */
    public static final long HELD = Long.MIN_VALUE;

    /** How long (processing time) {@link RowTime} holds a {@link #HELD} row for the next
     * row of its source. */
    static final long HELD_WAIT_MS = 500;

    /** Builds the chain on {@code keyedRows}; {@code out} is the type of what it emits;
     * {@code leadNs}: how far past the newest time a {@link #HELD} row no next row judged
     * may go on. */
    public static DataStream<Row> of(DataStream<Row> keyedRows, long tickMs,
                                     TypeInformation<Row> in, TypeInformation<Row> out,
                                     String[] timedPorts, long leadNs, String uid) {
        SingleOutputStreamOperator<Row> stamped = keyedRows
            .transform(uid + "_time", in, new RowTime(timedPorts, tickMs, leadNs, in))
            .setParallelism(keyedRows.getParallelism())  // chained: one clock a reader
            .uid(uid + "_time").name(uid + "_time");
        return stamped
            .keyBy(new SegmentKey(), org.apache.flink.api.common.typeinfo.Types.STRING)
            .window(TumblingEventTimeWindows.of(Duration.ofMillis(tickMs)))
            .process(new TickRows(tickMs), out)
            .uid(uid + "_ticks").name(uid + "_ticks");
    }

    /** The last ms of the tick that holds {@code tsNs}. */
    static long tickEnd(long tsNs, long tickMs) {
        return (Math.floorDiv(Math.floorDiv(tsNs, 1_000_000L), tickMs) + 1) * tickMs - 1;
    }

    /** The segment key of a {@code (key, row)} pair. */
    static final class SegmentKey implements KeySelector<Row, String> {
        @Override
        public String getKey(Row keyed) {
            return (String) keyed.getField(0);
        }
    }

    /**
     * Stamps each pair with its row's event time (ms); watermarks pass through. The
     * latest time a timed port gave is in checkpoints, so a row without one just after a
     * restore takes it, not 0 (which would be far behind the watermark). A row whose
     * tick the watermark has passed is stamped with the newest event time stamped
     * before it, or the first ms past the watermark, whichever is later: it joins the
     * window the rows that came before it are in (its own {@code ts} is kept in the row,
     * where {@link TickRows} finds it late). The window operator follows this operator's
     * watermark, or a lower one (the least of several subtasks'), so no row reaches it
     * behind its own.
     *
     * <p>A row its source stamped {@link #HELD} waits here, one a source ({@code src}),
     * until the next row of its source: it then goes on just before that row, at the
     * earlier of the two times (so a lone far time takes the next row's, and a genuine
     * jump keeps its own). Without a next row it goes on at its own time once that is at
     * most {@code leadNs} past the newest stamped (looked at every {@link #HELD_WAIT_MS}):
     * a lone far time on a partition that goes quiet waits for the partition's next row,
     * and opens no far tick. Waiting rows are in checkpoints.
     */
    static final class RowTime extends AbstractStreamOperator<Row>
            implements OneInputStreamOperator<Row, Row> {
        private final Set<String> timed;
        private final long tickMs;
        private final long leadMs;
        private final TypeInformation<Row> type;
        private long seen;
        private transient long watermark;
        private transient long newest;
        private transient ListState<Long> seenState;
        private transient Map<String, Row> held;
        private transient ListState<Row> heldState;

        RowTime(String[] timedPorts, long tickMs, long leadNs, TypeInformation<Row> type) {
            this.timed = new HashSet<>(List.of(timedPorts));
            this.tickMs = tickMs;
            this.leadMs = Math.floorDiv(leadNs, 1_000_000L);
            this.type = type;
        }

        @Override
        public void open() throws Exception {
            super.open();
            watermark = Long.MIN_VALUE;
            newest = Long.MIN_VALUE;
            for (Row keyed : held.values()) {  // restored: wait again
                waitFor(keyed);
            }
        }

        @Override
        public void processWatermark(Watermark mark) throws Exception {
            watermark = Math.max(watermark, mark.getTimestamp());
            super.processWatermark(mark);
        }

        @Override
        public void initializeState(StateInitializationContext context) throws Exception {
            super.initializeState(context);
            // a union: after a rescale every subtask starts from the latest any had
            seenState = context.getOperatorStateStore().getUnionListState(
                new ListStateDescriptor<>("seen", Long.class));
            for (Long at : seenState.get()) {
                seen = Math.max(seen, at);
            }
            heldState = context.getOperatorStateStore().getListState(
                new ListStateDescriptor<>("held", type));
            held = new HashMap<>();
            for (Row keyed : heldState.get()) {
                held.put(source(keyed), keyed);
            }
        }

        @Override
        public void snapshotState(StateSnapshotContext context) throws Exception {
            super.snapshotState(context);
            seenState.update(List.of(seen));
            heldState.update(new ArrayList<>(held.values()));
        }

        @Override
        public void processElement(StreamRecord<Row> element) {
            Row keyed = element.getValue();
            Row waiting = held.remove(source(keyed));
            if (element.hasTimestamp() && element.getTimestamp() == HELD) {
                if (waiting != null) {  // just before it, at the earlier time
                    stamp(withTs(waiting, Math.min(tsOf(waiting), tsOf(keyed))), false, 0);
                }
                held.put(source(keyed), keyed);
                waitFor(keyed);
                return;
            }
            boolean timedRow = ((Row) keyed.getField(1)).getField(1) != null;
            if (!timedRow) {
                keyed = withTs(keyed, seen);
            }
            boolean stamped = timedRow && element.hasTimestamp();
            if (waiting != null) {  // just before the row after it, at the earlier time
                long ts = Math.min(tsOf(waiting), tsOf(keyed));
                stamp(withTs(waiting, ts), stamped, element.getTimestamp());
            }
            stamp(keyed, stamped, element.getTimestamp());
        }

        /** Every {@link #HELD_WAIT_MS}, lets {@code keyed} go at its own time if it still
         * waits and that time is at most {@code leadMs} past the newest stamped (or the
         * first ms past the watermark); else it waits on. */
        private void waitFor(Row keyed) {
            long at = getProcessingTimeService().getCurrentProcessingTime() + HELD_WAIT_MS;
            getProcessingTimeService().registerTimer(at, time -> {
                if (held.get(source(keyed)) != keyed) {
                    return;  // the next row let it go
                }
                long known = Math.max(Math.max(newest, watermark + 1), 0);
                if (Math.floorDiv(tsOf(keyed), 1_000_000L) - leadMs <= known) {
                    held.remove(source(keyed));
                    stamp(keyed, false, 0);
                } else {
                    waitFor(keyed);
                }
            });
        }

        /** Stamps a row whose {@code ts} is set, cut to the source's event time if
         * {@code stamped} and past it, and hands it on. */
        private void stamp(Row keyed, boolean stamped, long sourceMs) {
            Row row = (Row) keyed.getField(1);
            long ts = (Long) row.getField(1);
            if (stamped && Math.floorDiv(ts, 1_000_000L) > sourceMs) {
                ts = sourceMs * 1_000_000L;  // the source cut it: skew
            }
            if (timed.contains((String) row.getField(0))) {
                seen = Math.max(seen, ts);
            }
            long ms = Math.floorDiv(ts, 1_000_000L);
            if (Math.floorDiv(ms, tickMs) * tickMs + tickMs - 1 <= watermark) {
                ms = Math.max(newest, watermark + 1);  // late: after the rows before it
            }
            newest = Math.max(newest, ms);
            output.collect(new StreamRecord<>(keyed, ms));
        }

        private static String source(Row keyed) {
            return (String) ((Row) keyed.getField(1)).getField(2);
        }

        private static long tsOf(Row keyed) {
            return (Long) ((Row) keyed.getField(1)).getField(1);
        }

        private static Row withTs(Row keyed, long ts) {
            Row row = Row.copy((Row) keyed.getField(1));
            row.setField(1, ts);
            return Row.of(keyed.getField(0), row);
        }
    }

    static final Comparator<Row> ORDER = Comparator
        .comparing((Row r) -> (Long) r.getField(1))
        .thenComparing(r -> (String) r.getField(2))
        .thenComparing(r -> (Long) r.getField(3));

    /**
     * A tick's rows, in order, as one row; then each late row in it (one whose own event
     * time is before the tick: {@link RowTime}), alone, in the order they came, with its
     * own tick. Late rows are counted in the operator's metric {@code lateRows}: any at
     * all means the flow saw rows out of the input's order.
     */
    static final class TickRows extends ProcessWindowFunction<Row, Row, String, TimeWindow> {
        private final long tickMs;
        private transient Counter lateRows;

        TickRows(long tickMs) {
            this.tickMs = tickMs;
        }

        @Override
        public void open(OpenContext context) throws Exception {
            super.open(context);
            lateRows = getRuntimeContext().getMetricGroup().counter("lateRows");
        }

        @Override
        public void process(String key, Context ctx, Iterable<Row> pairs, Collector<Row> out) {
            long start = ctx.window().getStart();
            List<Row> rows = new ArrayList<>();
            List<Row> late = new ArrayList<>();
            for (Row pair : pairs) {
                Row row = (Row) pair.getField(1);
                boolean behind = Math.floorDiv((Long) row.getField(1), 1_000_000L) < start;
                (behind ? late : rows).add(row);
            }
            if (!rows.isEmpty()) {
                rows.sort(ORDER);
                long end = ctx.window().maxTimestamp();
                out.collect(Row.of(key, Row.of(end, false, Packed.tick(end, rows))));
            }
            for (Row row : late) {
                lateRows.inc();
                long end = tickEnd((Long) row.getField(1), tickMs);
                out.collect(Row.of(key, Row.of(end, true, Packed.tick(end, List.of(row)))));
            }
        }
    }
}
