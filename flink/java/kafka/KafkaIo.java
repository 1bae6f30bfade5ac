package riskguard.flink.kafka;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;
import java.util.Properties;

import org.apache.flink.api.common.eventtime.SerializableTimestampAssigner;
import org.apache.flink.api.common.eventtime.WatermarkStrategy;
import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.connector.base.DeliveryGuarantee;
import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.connector.kafka.sink.KafkaSink;
import org.apache.flink.connector.kafka.source.KafkaSource;
import org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer;
import org.apache.flink.connector.kafka.source.reader.deserializer.KafkaRecordDeserializationSchema;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonFactory;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonParser;
import org.apache.flink.shaded.jackson2.com.fasterxml.jackson.core.JsonToken;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.types.Row;
import org.apache.flink.util.Collector;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerRecord;

import riskguard.flink.TickBatches;

/**
 * The live guard's Kafka input and output, on Flink's DataStream connector: no SQL
 * planner in the job.
 *
 * <p>The source reads every input topic as {@code (key, ("kafka", ts, "topic/partition",
 * offset, value))} rows, {@code ts} being the message's top-level JSON {@code ts} field
 * (ns; null where it has none). Its event time is {@code ts} in ms, or the Kafka
 * timestamp for a message without one, and never beyond the Kafka timestamp plus the
 * allowed future skew: a record from the future cannot carry a partition's watermark
 * away. Nor can a record far ahead of its partition's time ({@code maxLeadNs}, the
 * guard's {@code input.max_lead_ns}; 0: no limit), held until the partition's next
 * record judges it ({@link LeadGate}): it has no event time ({@link TickBatches#HELD})
 * and waits for the partition's next row in the tick chain. The watermark, a millisecond behind the latest event time, is kept per
 * partition, a quiet partition stops holding it back, and once every partition has
 * been quiet for {@code allQuietMs} it moves past the tick ({@code tickMs}) of the
 * newest event time, so the records before a lull go on ({@link QuietPartitions}).
 *
 * <p>The sink writes each {@code (k, port, ts, src, pos, v)} row whose port names an
 * output topic to that topic, keyed by {@code src}, at least once: a delivery that fails
 * fails the job.
 */
public final class KafkaIo {
    private KafkaIo() {}

    /** The input topics as watermarked rows of {@code type}, under the segment key. */
    public static DataStream<Row> source(StreamExecutionEnvironment env, Properties props,
                                         String[] topics, String group, boolean earliest,
                                         long startMs, long quietMs, long allQuietMs,
                                         long tickMs, long maxSkewMs, long maxLeadNs,
                                         String segmentKey, TypeInformation<Row> type,
                                         String uid) {
        KafkaSource<Row> source = KafkaSource.<Row>builder()
            .setProperties(props)
            .setTopics(Arrays.asList(topics))
            .setGroupId(group)
            .setStartingOffsets(earliest ? OffsetsInitializer.earliest()
                                         : OffsetsInitializer.latest())
            .setDeserializer(new Messages(segmentKey, type))
            .build();
        WatermarkStrategy<Row> time =
            QuietPartitions.strategy(startMs, quietMs, allQuietMs, tickMs, maxLeadNs,
                                     new EventTime(maxSkewMs, maxLeadNs));
        // one reader: the guard is one segment under one key, so a second reader adds
        // no throughput, only a race between two watermarks that makes rows late
        return env.fromSource(source, time, uid, type).setParallelism(1).uid(uid);
    }

    /** Writes each row of {@code rows} whose port is a key of {@code topics} there. */
    public static void sink(DataStream<Row> rows, Properties props,
                            Map<String, String> topics, String uid) {
        KafkaSink<Row> sink = KafkaSink.<Row>builder()
            .setKafkaProducerConfig(props)
            .setRecordSerializer(new Outputs(new HashMap<>(topics)))
            .setDeliveryGuarantee(DeliveryGuarantee.AT_LEAST_ONCE)
            .build();
        rows.sinkTo(sink).uid(uid).name(uid);
    }

    /**
     * A message's top-level {@code ts}, if it is a whole number from 0 to the largest
     * long (what a record's {@code ts} may be): else none, so a record with a {@code ts}
     * no record may have goes with its neighbours, and the flow dead-letters it as
     * bytewax's admission does, rather than behind the watermark.
     */
    static Long tsField(JsonFactory json, byte[] value) {
        if (value == null) {
            return null;
        }
        try (JsonParser p = json.createParser(value)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                return null;
            }
            while (p.nextToken() == JsonToken.FIELD_NAME) {
                boolean ts = "ts".equals(p.currentName());
                JsonToken t = p.nextToken();
                if (ts) {
                    if (t != JsonToken.VALUE_NUMBER_INT
                            || p.getNumberType() == JsonParser.NumberType.BIG_INTEGER) {
                        return null;
                    }
                    long v = p.getLongValue();
                    return v < 0 ? null : v;
                }
                p.skipChildren();
            }
            return null;
        } catch (IOException e) {
            return null;
        }
    }

    static final class Messages implements KafkaRecordDeserializationSchema<Row> {
        private final String segmentKey;
        private final TypeInformation<Row> type;
        private transient JsonFactory json;

        @Override
        public void open(DeserializationSchema.InitializationContext context) {
            json = new JsonFactory();
        }

        Messages(String segmentKey, TypeInformation<Row> type) {
            this.segmentKey = segmentKey;
            this.type = type;
        }

        @Override
        public void deserialize(ConsumerRecord<byte[], byte[]> msg, Collector<Row> out) {
            byte[] value = msg.value();
            out.collect(Row.of(segmentKey, Row.of(
                "kafka", tsField(json, value), msg.topic() + "/" + msg.partition(),
                msg.offset(), value)));
        }

        @Override
        public TypeInformation<Row> getProducedType() {
            return type;
        }
    }

    /** A row's event time; a row whose time its partition's {@link LeadGate} holds
     * (one a partition the reader reads) is {@link TickBatches#HELD}. */
    static final class EventTime implements SerializableTimestampAssigner<Row> {
        private final long maxSkewMs;
        private final long maxLeadNs;
        private transient Map<String, LeadGate> gates;

        EventTime(long maxSkewMs, long maxLeadNs) {
            this.maxSkewMs = maxSkewMs;
            this.maxLeadNs = maxLeadNs;
        }

        @Override
        public long extractTimestamp(Row keyed, long kafkaMs) {
            Row row = (Row) keyed.getField(1);
            Long ts = (Long) row.getField(1);
            if (ts != null && maxLeadNs > 0 && gate((String) row.getField(2)).holds(ts)) {
                return TickBatches.HELD;
            }
            long ms = ts == null ? kafkaMs : Math.floorDiv(ts, 1_000_000L);
            return kafkaMs < 0 ? ms : Math.min(ms, kafkaMs + maxSkewMs);
        }

        private LeadGate gate(String partition) {
            if (gates == null) {
                gates = new HashMap<>();
            }
            return gates.computeIfAbsent(partition, p -> new LeadGate(maxLeadNs));
        }
    }

    static final class Outputs implements KafkaRecordSerializationSchema<Row> {
        private final HashMap<String, String> topics;

        Outputs(HashMap<String, String> topics) {
            this.topics = topics;
        }

        @Override
        public ProducerRecord<byte[], byte[]> serialize(Row row, KafkaSinkContext ctx,
                                                        Long timestamp) {
            String topic = topics.get((String) row.getField(1));
            if (topic == null) {
                return null;  // a port of no output topic: the writer sends nothing
            }
            String src = (String) row.getField(3);
            return new ProducerRecord<>(topic, null, null,
                src == null ? null : src.getBytes(StandardCharsets.UTF_8),
                (byte[]) row.getField(5));
        }
    }
}
