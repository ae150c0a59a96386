// A grpc-java client for the interoperability test (tests/grpc_java.rs):
// calls imaged's containerd Version service and its namespaces List with
// grpc-java's Netty transport and default channel options. Debian's
// grpc-java has no native epoll, so it reaches the daemon's Unix socket
// through a byte-for-byte TCP relay, sending as `:authority` what grpc-java
// sends on a Unix socket: the socket's path (argument 3).
//
// Usage: java VersionCall HOST PORT AUTHORITY
// Prints "version <v>" and "namespaces <n>", or the call's status.
import io.grpc.CallOptions;
import io.grpc.ManagedChannel;
import io.grpc.MethodDescriptor;
import io.grpc.StatusRuntimeException;
import io.grpc.netty.InternalNettyChannelBuilder;
import io.grpc.netty.NettyChannelBuilder;
import io.grpc.stub.ClientCalls;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;

public class VersionCall {
    /** Requests and answers as raw protobuf bytes: no generated code. */
    static final MethodDescriptor.Marshaller<byte[]> RAW = new MethodDescriptor.Marshaller<byte[]>() {
        public InputStream stream(byte[] value) {
            return new ByteArrayInputStream(value);
        }

        public byte[] parse(InputStream in) {
            try {
                return in.readAllBytes();
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }
    };

    static MethodDescriptor<byte[], byte[]> unary(String name) {
        return MethodDescriptor.<byte[], byte[]>newBuilder()
            .setType(MethodDescriptor.MethodType.UNARY)
            .setFullMethodName(name)
            .setRequestMarshaller(RAW)
            .setResponseMarshaller(RAW)
            .build();
    }

    /** The first length-delimited field 1 of a message, as UTF-8. */
    static String field1(byte[] message) {
        if (message.length < 2 || message[0] != 0x0a) {
            return "";
        }
        int len = message[1];
        return new String(message, 2, len, StandardCharsets.UTF_8);
    }

    /** How many times field 1 (length-delimited) occurs at the top level. */
    static int count1(byte[] message) {
        int n = 0;
        int at = 0;
        while (at < message.length) {
            int tag = message[at++];
            int len = 0;
            int shift = 0;
            while (true) {
                int b = message[at++] & 0xff;
                len |= (b & 0x7f) << shift;
                shift += 7;
                if (b < 0x80) {
                    break;
                }
            }
            if (tag == 0x0a) {
                n++;
            }
            at += len;
        }
        return n;
    }

    public static void main(String[] args) throws Exception {
        NettyChannelBuilder builder = NettyChannelBuilder.forAddress(args[0], Integer.parseInt(args[1]));
        // A Unix socket's path is no host name; grpc-java sends it unchecked
        // when it dials the socket itself, and so does this.
        InternalNettyChannelBuilder.disableCheckAuthority(builder);
        ManagedChannel channel = builder.usePlaintext().overrideAuthority(args[2]).build();
        try {
            byte[] version = ClientCalls.blockingUnaryCall(
                channel, unary("containerd.services.version.v1.Version/Version"), CallOptions.DEFAULT, new byte[0]);
            System.out.println("version " + field1(version));
            byte[] namespaces = ClientCalls.blockingUnaryCall(
                channel, unary("containerd.services.namespaces.v1.Namespaces/List"), CallOptions.DEFAULT, new byte[0]);
            System.out.println("namespaces " + count1(namespaces));
        } catch (StatusRuntimeException e) {
            System.out.println("status " + e.getStatus());
            System.exit(1);
        } finally {
            channel.shutdownNow();
        }
    }
}
