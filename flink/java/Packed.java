package riskguard.flink;

import java.io.ByteArrayOutputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.List;

import org.apache.flink.types.Row;

/**
 * A tick's rows as MessagePack bytes: {@code [tick_end_ms, [[port, ts, src, pos, bytes],
 * ...]]}, each row a {@code (port, ts, src, pos, bytes)} row of strings, longs and bytes
 * (a null as nil). It writes only what a tick holds, in the format's shortest forms
 * for small counts and lengths; {@code riskguard.flink.wire.unpack_batch} reads it.
 */
final class Packed {
    private Packed() {}

    static byte[] tick(long tickEndMs, List<Row> rows) {
        ByteArrayOutputStream buf = new ByteArrayOutputStream(64 + 96 * rows.size());
        DataOutputStream out = new DataOutputStream(buf);
        try {
            array(out, 2);
            integer(out, tickEndMs);
            array(out, rows.size());
            for (Row row : rows) {
                array(out, 5);
                text(out, (String) row.getField(0));
                integer(out, (Long) row.getField(1));
                text(out, (String) row.getField(2));
                integer(out, (Long) row.getField(3));
                bytes(out, (byte[]) row.getField(4));
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);  // a ByteArrayOutputStream does not throw
        }
        return buf.toByteArray();
    }

    static void array(DataOutputStream out, int n) throws IOException {
        if (n < 16) {
            out.writeByte(0x90 | n);
        } else if (n < 0x10000) {
            out.writeByte(0xdc);
            out.writeShort(n);
        } else {
            out.writeByte(0xdd);
            out.writeInt(n);
        }
    }

    static void integer(DataOutputStream out, Long v) throws IOException {
        if (v == null) {
            out.writeByte(0xc0);
        } else if (v >= 0 && v < 128) {
            out.writeByte(v.intValue());
        } else {
            out.writeByte(0xd3);
            out.writeLong(v);
        }
    }

    static void text(DataOutputStream out, String s) throws IOException {
        if (s == null) {
            out.writeByte(0xc0);
            return;
        }
        byte[] b = s.getBytes(StandardCharsets.UTF_8);
        if (b.length < 32) {
            out.writeByte(0xa0 | b.length);
        } else {
            length(out, b.length, 0xd9);
        }
        out.write(b);
    }

    static void bytes(DataOutputStream out, byte[] b) throws IOException {
        if (b == null) {
            out.writeByte(0xc0);
            return;
        }
        length(out, b.length, 0xc4);
        out.write(b);
    }

    /** A length after the first of three codes: for an 8-, 16- or 32-bit length. */
    static void length(DataOutputStream out, int n, int code8) throws IOException {
        if (n < 0x100) {
            out.writeByte(code8);
            out.writeByte(n);
        } else if (n < 0x10000) {
            out.writeByte(code8 + 1);
            out.writeShort(n);
        } else {
            out.writeByte(code8 + 2);
            out.writeInt(n);
        }
    }
}
