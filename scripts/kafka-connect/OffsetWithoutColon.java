// A Kafka Connect transformation for the Iceberg sink benchmark (scripts/kafka-connect.sh).
//
// The Iceberg sink 1.9.2 parses a timestamptz string with ISO_LOCAL_DATE_TIME followed by an
// offset in the form +HHmm, and removes the colon of a +HH:mm offset only when the seconds have no
// fraction. So it rejects RFC 3339 timestamps such as 2026-11-28T20:19:16.560742+00:00 (what floe
// publish-sample, chrono and Python's isoformat emit), and the task dies (apache/iceberg issue
// 15838; the 1.12.0 sink parses them). This transformation rewrites the trailing +HH:mm of the
// configured fields of a schemaless (Map) value to +HHmm, which the sink accepts; the instant is
// unchanged.
//
//   transforms=offset
//   transforms.offset.type=floe.connect.OffsetWithoutColon
//   transforms.offset.fields=timestamp
package floe.connect;

import java.util.HashMap;
import java.util.List;
import java.util.Map;
import org.apache.kafka.common.config.ConfigDef;
import org.apache.kafka.connect.connector.ConnectRecord;
import org.apache.kafka.connect.transforms.Transformation;

public class OffsetWithoutColon<R extends ConnectRecord<R>> implements Transformation<R> {
  private static final ConfigDef CONFIG =
      new ConfigDef()
          .define("fields", ConfigDef.Type.LIST, ConfigDef.Importance.HIGH,
              "Top-level fields of the value whose +HH:mm offset is rewritten to +HHmm");

  private List<String> fields;

  @Override
  public void configure(Map<String, ?> props) {
    fields = new org.apache.kafka.common.config.AbstractConfig(CONFIG, props).getList("fields");
  }

  @Override
  public R apply(R record) {
    if (!(record.value() instanceof Map)) {
      return record; // a tombstone or a value with a schema: nothing to rewrite here
    }
    Map<?, ?> value = (Map<?, ?>) record.value();
    Map<Object, Object> out = null;
    for (String field : fields) {
      Object v = value.get(field);
      if (v instanceof String) {
        String s = (String) v;
        int n = s.length();
        if (n >= 6 && (s.charAt(n - 6) == '+' || s.charAt(n - 6) == '-') && s.charAt(n - 3) == ':') {
          if (out == null) {
            out = new HashMap<>(value);
          }
          out.put(field, s.substring(0, n - 3) + s.substring(n - 2));
        }
      }
    }
    if (out == null) {
      return record;
    }
    return record.newRecord(record.topic(), record.kafkaPartition(), record.keySchema(), record.key(),
        record.valueSchema(), out, record.timestamp(), record.headers());
  }

  @Override
  public ConfigDef config() {
    return CONFIG;
  }

  @Override
  public void close() {}
}
