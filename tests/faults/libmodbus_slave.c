/* A Modbus slave built on libmodbus, for the tests: a stack the gateway's authors did not write.
 *
 *   libmodbus_slave rtu <serial device> <unit>   RTU slave on a serial port (a pty in the tests), 9600 8N1
 *   libmodbus_slave tcp <port> <unit>            Modbus TCP server on 127.0.0.1:<port>
 *
 * Tables (0-based): holding register i = 1000 + i, input register i = 2000 + i (i < 100);
 * coil i = (i % 3 == 0), discrete input i = (i % 2 == 1) (i < 64). Prints "ready" once listening.
 * libmodbus's own response timeout (0.5 s) is kept: after a request for another unit it waits that long for
 * the answer and takes the next frame for it, which is what the RTU recovery test depends on.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <modbus.h>

static modbus_mapping_t *make_mapping(void) {
    modbus_mapping_t *map = modbus_mapping_new(64, 64, 100, 100);
    if (map == NULL) {
        fprintf(stderr, "mapping: %s\n", modbus_strerror(errno));
        exit(1);
    }
    for (int i = 0; i < 100; i++) {
        map->tab_registers[i] = (uint16_t)(1000 + i);
        map->tab_input_registers[i] = (uint16_t)(2000 + i);
    }
    for (int i = 0; i < 64; i++) {
        map->tab_bits[i] = (i % 3 == 0);
        map->tab_input_bits[i] = (i % 2 == 1);
    }
    return map;
}

static int serve(modbus_t *ctx, modbus_mapping_t *map) {
    uint8_t query[MODBUS_TCP_MAX_ADU_LENGTH];
    for (;;) {
        int rc = modbus_receive(ctx, query);
        if (rc > 0) {
            modbus_reply(ctx, query, rc, map);
        } else if (rc == -1 && (errno == ECONNRESET || errno == EIO || errno == EBADF || errno == EPIPE)) {
            return -1;  /* peer gone */
        } else if (rc == -1 && errno != EMBBADCRC && errno != EMBBADDATA && errno != ETIMEDOUT
                   && errno != EMBBADSLAVE && errno != EMBBADEXC && errno != EMBMDATA) {
            return -1;
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s rtu <device> <unit> | tcp <port> <unit>\n", argv[0]);
        return 2;
    }
    int unit = atoi(argv[3]);
    modbus_mapping_t *map = make_mapping();
    setvbuf(stdout, NULL, _IONBF, 0);
    if (strcmp(argv[1], "rtu") == 0) {
        modbus_t *ctx = modbus_new_rtu(argv[2], 9600, 'N', 8, 1);
        if (ctx == NULL || modbus_set_slave(ctx, unit) == -1 || modbus_connect(ctx) == -1) {
            fprintf(stderr, "rtu: %s\n", modbus_strerror(errno));
            return 1;
        }
        printf("ready\n");
        for (;;) {
            if (serve(ctx, map) == -1 && (errno == EIO || errno == EBADF)) {
                return 0;  /* the line was closed */
            }
        }
    }
    modbus_t *ctx = modbus_new_tcp("127.0.0.1", atoi(argv[2]));
    if (ctx == NULL || modbus_set_slave(ctx, unit) == -1) {
        fprintf(stderr, "tcp: %s\n", modbus_strerror(errno));
        return 1;
    }
    int listener = modbus_tcp_listen(ctx, 4);
    if (listener == -1) {
        fprintf(stderr, "listen: %s\n", modbus_strerror(errno));
        return 1;
    }
    printf("ready\n");
    for (;;) {
        int s = listener;
        if (modbus_tcp_accept(ctx, &s) == -1) {
            return 1;
        }
        serve(ctx, map);
        close(s);
    }
}
