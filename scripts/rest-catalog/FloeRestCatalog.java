// floe's test REST catalog: Apache Iceberg's REST catalog adapter and servlet (from Maven
// Central's iceberg-core test jar, the same ones Iceberg's REST test fixture serves) over a
// JdbcCatalog in a SQLite file, on one address of our choosing. The fixture's own main class
// always listens on every interface; the tests must only listen on 127.0.0.1.
//
//   java -cp <jars> FloeRestCatalog HOST PORT WAREHOUSE DB_FILE PORT_FILE
//
// PORT 0 picks a free port; the port listened on is written to PORT_FILE once the server is up.
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.Map;
import org.apache.hadoop.conf.Configuration;
import org.apache.iceberg.CatalogUtil;
import org.apache.iceberg.catalog.Catalog;
import org.apache.iceberg.rest.RESTCatalogAdapter;
import org.apache.iceberg.rest.RESTCatalogServlet;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.servlet.ServletContextHandler;
import org.eclipse.jetty.servlet.ServletHolder;

public class FloeRestCatalog {
  public static void main(String[] args) throws Exception {
    if (args.length != 5) {
      System.err.println("usage: FloeRestCatalog HOST PORT WAREHOUSE DB_FILE PORT_FILE");
      System.exit(2);
    }
    Map<String, String> props = new HashMap<>();
    props.put("uri", "jdbc:sqlite:" + args[3]);
    props.put("jdbc.schema-version", "V1");
    props.put("warehouse", args[2]);
    props.put("catalog-impl", "org.apache.iceberg.jdbc.JdbcCatalog");
    Catalog catalog = CatalogUtil.buildIcebergCatalog("floe_rest", props, new Configuration());

    ServletContextHandler context = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
    context.addServlet(new ServletHolder(new RESTCatalogServlet(new RESTCatalogAdapter(catalog))), "/*");
    Server server = new Server();
    ServerConnector connector = new ServerConnector(server);
    connector.setHost(args[0]);
    connector.setPort(Integer.parseInt(args[1]));
    server.addConnector(connector);
    server.setHandler(context);
    server.start();
    Path portFile = Path.of(args[4]);
    Path tmp = Path.of(args[4] + ".tmp");
    Files.writeString(tmp, Integer.toString(connector.getLocalPort()) + "\n");
    Files.move(tmp, portFile);
    server.join();
  }
}
