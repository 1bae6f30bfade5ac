package riskguard.flink;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Base64;

import org.apache.flink.api.common.eventtime.SerializableTimestampAssigner;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.connector.file.src.FileSource;
import org.apache.flink.connector.file.src.reader.TextLineInputFormat;
import org.apache.flink.core.fs.Path;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.operators.AbstractStreamOperator;
import org.apache.flink.streaming.api.operators.BoundedOneInput;
import org.apache.flink.streaming.api.operators.OneInputStreamOperator;
import org.apache.flink.streaming.api.watermark.Watermark;
import org.apache.flink.streaming.runtime.streamrecord.StreamRecord;
import org.apache.flink.types.Row;

/**
 * A backtest's records and outputs, in Java: no SQL planner in the job.
 *
 * <p>{@link #rows} reads a file of {@code ts,pos,base64} lines (event time in ns, line
 * number, the record's bytes) as {@code (key, (port, ts, "", pos, bytes))} rows whose
 * event time is {@code ts} in ms, with a watermark a millisecond behind the latest: a row
 * of the same millisecond as the latest is not late. {@link #texts} makes the flow's
 * {@code (k, port, ts, src, pos, v)} output rows {@code port TAB text} lines (the text
 * is {@code v} as UTF-8: a record's JSON, which holds no raw newline), several to a
 * string: all that came before each watermark, and the rest at the end. A client
 * collects each string with one call, not each row with several.
 */
public final class RecordsFile {
    private RecordsFile() {}

    /** The file's lines as watermarked rows of {@code type} under {@code key}. */
    public static DataStream<Row> rows(StreamExecutionEnvironment env, String uri,
                                       String key, String port, TypeInformation<Row> type,
                                       String uid) {
        FileSource<String> file = FileSource
            .forRecordStreamFormat(new TextLineInputFormat(), new Path(uri)).build();
        WatermarkStrategy<Row> time = WatermarkStrategy
            .<Row>forBoundedOutOfOrderness(Duration.ZERO)
            .withTimestampAssigner(new EventTime());
        return env.fromSource(file, WatermarkStrategy.noWatermarks(), uid)
            .uid(uid).setParallelism(1)
            .map(new Line(key, port), type).uid(uid + "_rows").name(uid + "_rows")
            .setParallelism(1)
            .assignTimestampsAndWatermarks(time).uid(uid + "_time").name(uid + "_time")
            .setParallelism(1);
    }

    /** The output rows as strings of {@code port TAB text} lines. */
    public static DataStream<String> texts(DataStream<Row> outputs) {
        return outputs.transform("texts", Types.STRING, new Texts()).setParallelism(1);
    }

    /**
     * A {@code ts,pos,base64} line as a row. A line it cannot read (a time or position
     * that is not a long, bytes that are not base64) is no reason to fail the job: it
     * goes on as its own text, with the time and position of the line before it (one
     * reader reads the file in order), and the flow dead-letters it as malformed.
     */
    static final class Line implements MapFunction<String, Row> {
        private final String key;
        private final String port;
        private long lastTs;
        private long lastPos;

        Line(String key, String port) {
            this.key = key;
            this.port = port;
        }

        @Override
        public Row map(String line) {
            int a = line.indexOf(',');
            int b = a < 0 ? -1 : line.indexOf(',', a + 1);
            Long ts = b < 0 ? null : number(line.substring(0, a));
            Long pos = b < 0 ? null : number(line.substring(a + 1, b));
            byte[] bytes = null;
            if (b >= 0) {
                try {
                    bytes = Base64.getDecoder().decode(line.substring(b + 1));
                } catch (IllegalArgumentException e) {
                    bytes = null;
                }
            }
            if (ts == null || pos == null || bytes == null) {
                // not a line as written: its text goes on with the time and position
                // before it, for the flow to dead-letter, not a failed job
                return Row.of(key, Row.of(port, lastTs, "", lastPos,
                    line.getBytes(StandardCharsets.UTF_8)));
            }
            lastTs = ts;
            lastPos = pos;
            return Row.of(key, Row.of(port, ts, "", pos, bytes));
        }

        /** A whole number that fits a long, or null. */
        static Long number(String text) {
            try {
                return Long.parseLong(text);
            } catch (NumberFormatException e) {
                return null;
            }
        }
    }

    static final class EventTime implements SerializableTimestampAssigner<Row> {
        @Override
        public long extractTimestamp(Row keyed, long previous) {
            return Math.floorDiv((Long) ((Row) keyed.getField(1)).getField(1), 1_000_000L);
        }
    }

    static final class Texts extends AbstractStreamOperator<String>
            implements OneInputStreamOperator<Row, String>, BoundedOneInput {
        /** A string's most characters before it goes on: the client's collect sink
         * refuses a record over 2 MiB, and a busy stretch between two watermarks made
         * more (the lines are JSON, a few bytes a character at most). */
        static final int MAX_CHARS = 256 * 1024;

        private final StringBuilder lines = new StringBuilder();

        @Override
        public void processElement(StreamRecord<Row> element) {
            Row row = element.getValue();
            lines.append((String) row.getField(1)).append('\t')
                 .append(new String((byte[]) row.getField(5), StandardCharsets.UTF_8))
                 .append('\n');
            if (lines.length() >= MAX_CHARS) {
                flush();
            }
        }

        @Override
        public void processWatermark(Watermark mark) throws Exception {
            flush();
            super.processWatermark(mark);
        }

        @Override
        public void endInput() {
            flush();
        }

        private void flush() {
            if (lines.length() > 0) {
                output.collect(new StreamRecord<>(lines.toString()));
                lines.setLength(0);
            }
        }
    }
}
