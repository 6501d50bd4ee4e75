// floe's test REST catalog: Apache Iceberg's REST catalog adapter and servlet (from Maven
// Central's iceberg-core test jar, the same ones Iceberg's REST test fixture serves) over a
// JdbcCatalog in a SQLite file, on one address of our choosing. The fixture's own main class
// always listens on every interface; the tests must only listen on 127.0.0.1.
//
//   java -cp <jars> FloeRestCatalog HOST PORT WAREHOUSE DB_FILE PORT_FILE
//
// PORT 0 picks a free port; the port listened on is written to PORT_FILE once the server is up.
//
// Options, from the environment (scripts/rest-catalog.sh passes them through):
//   FLOE_REST_CATALOG_PROPERTIES  more catalog properties, one `key=value` a line: e.g. io-impl =
//                                 org.apache.iceberg.aws.s3.S3FileIO with s3.endpoint, s3.path-style-access,
//                                 s3.access-key-id, s3.secret-access-key, client.region for a warehouse on S3
//   FLOE_REST_OAUTH_CLIENT        `client_id:client_secret`: POST /v1/oauth/tokens issues a token for these
//                                 credentials only (client-credentials grant), and every other request
//                                 must carry `Authorization: Bearer <a token it issued>`
//   FLOE_REST_TOKEN               a bearer token accepted as well (and then required, like the above)
//   FLOE_REST_REQUIRE_HEADER      `Name=value`: every request must carry that header with that value
//                                 (refused with 400 otherwise); each request's value is logged
import jakarta.servlet.DispatcherType;
import jakarta.servlet.Filter;
import jakarta.servlet.FilterChain;
import jakarta.servlet.ServletException;
import jakarta.servlet.ServletRequest;
import jakarta.servlet.ServletResponse;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.SecureRandom;
import java.util.EnumSet;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.hadoop.conf.Configuration;
import org.apache.iceberg.CatalogUtil;
import org.apache.iceberg.catalog.Catalog;
import org.apache.iceberg.rest.RESTCatalogAdapter;
import org.apache.iceberg.rest.RESTCatalogServlet;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.eclipse.jetty.servlet.FilterHolder;
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
    String extra = System.getenv("FLOE_REST_CATALOG_PROPERTIES");
    if (extra != null) {
      for (String line : extra.split("\n")) {
        int eq = line.indexOf('=');
        if (line.isBlank()) continue;
        if (eq < 1) throw new IllegalArgumentException("FLOE_REST_CATALOG_PROPERTIES: not key=value: " + line);
        props.put(line.substring(0, eq).trim(), line.substring(eq + 1).trim());
      }
    }
    Catalog catalog = CatalogUtil.buildIcebergCatalog("floe_rest", props, new Configuration());

    ServletContextHandler context = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
    Guard guard = new Guard(System.getenv("FLOE_REST_OAUTH_CLIENT"), System.getenv("FLOE_REST_TOKEN"),
        System.getenv("FLOE_REST_REQUIRE_HEADER"));
    context.addFilter(new FilterHolder(guard), "/*", EnumSet.of(DispatcherType.REQUEST));
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

  /** The checks a production catalog makes before the REST servlet sees a request. */
  static final class Guard implements Filter {
    private final String clientId;
    private final String clientSecret;
    private final Set<String> tokens = ConcurrentHashMap.newKeySet();
    private final boolean requireToken;
    private final String headerName;
    private final String headerValue;
    private final SecureRandom random = new SecureRandom();

    Guard(String client, String token, String header) {
      if (client != null && !client.isEmpty()) {
        int colon = client.indexOf(':');
        if (colon < 1) throw new IllegalArgumentException("FLOE_REST_OAUTH_CLIENT must be client_id:client_secret");
        clientId = client.substring(0, colon);
        clientSecret = client.substring(colon + 1);
      } else {
        clientId = null;
        clientSecret = null;
      }
      if (token != null && !token.isEmpty()) tokens.add(token);
      requireToken = clientId != null || !tokens.isEmpty();
      if (header != null && !header.isEmpty()) {
        int eq = header.indexOf('=');
        if (eq < 1) throw new IllegalArgumentException("FLOE_REST_REQUIRE_HEADER must be Name=value");
        headerName = header.substring(0, eq);
        headerValue = header.substring(eq + 1);
      } else {
        headerName = null;
        headerValue = null;
      }
    }

    @Override
    public void doFilter(ServletRequest request, ServletResponse response, FilterChain chain)
        throws IOException, ServletException {
      HttpServletRequest req = (HttpServletRequest) request;
      HttpServletResponse resp = (HttpServletResponse) response;
      String path = req.getRequestURI();
      if (headerName != null) {
        String got = req.getHeader(headerName);
        System.err.println("floe-rest-guard: " + req.getMethod() + " " + path + " header " + headerName + "=" + got);
        if (!headerValue.equals(got)) {
          error(resp, 400, "BadRequestException", "header " + headerName + " must be " + headerValue + ", got " + got);
          return;
        }
      }
      if (clientId != null && path.endsWith("/v1/oauth/tokens")) {
        String id = req.getParameter("client_id");
        String secret = req.getParameter("client_secret");
        if (!"client_credentials".equals(req.getParameter("grant_type"))
            || !clientId.equals(id) || !clientSecret.equals(secret)) {
          System.err.println("floe-rest-guard: token refused for client " + id);
          write(resp, 401, "{\"error\":\"invalid_client\",\"error_description\":\"unknown client or wrong secret\"}");
          return;
        }
        byte[] bytes = new byte[16];
        random.nextBytes(bytes);
        String token = HexFormat.of().formatHex(bytes);
        tokens.add(token);
        System.err.println("floe-rest-guard: token issued to client " + id);
        write(resp, 200, "{\"access_token\":\"" + token + "\",\"token_type\":\"bearer\","
            + "\"issued_token_type\":\"urn:ietf:params:oauth:token-type:access_token\",\"expires_in\":3600}");
        return;
      }
      if (requireToken) {
        String auth = req.getHeader("Authorization");
        String token = auth != null && auth.startsWith("Bearer ") ? auth.substring(7) : null;
        if (token == null || !tokens.contains(token)) {
          System.err.println("floe-rest-guard: " + req.getMethod() + " " + path + " refused: "
              + (token == null ? "no bearer token" : "unknown token"));
          error(resp, 401, "NotAuthorizedException", token == null ? "no bearer token" : "the token is not valid");
          return;
        }
      }
      chain.doFilter(request, response);
    }

    private static void error(HttpServletResponse resp, int code, String type, String message) throws IOException {
      write(resp, code, "{\"error\":{\"message\":\"" + message.replace("\"", "'") + "\",\"type\":\"" + type
          + "\",\"code\":" + code + "}}");
    }

    private static void write(HttpServletResponse resp, int code, String json) throws IOException {
      resp.setStatus(code);
      resp.setContentType("application/json");
      resp.getOutputStream().write(json.getBytes(StandardCharsets.UTF_8));
    }
  }
}
