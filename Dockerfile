# chatlog's processes in one image: the projector, the summarizer, the HTTP gateway and
# the one-shot commands (`chatlog topics create`, `chatlog replay`, ...). The entry point
# is `chatlog`; the command picks the process (docker-compose.yml runs each of them).
#
#   docker build -t chatlog:0.1.0 .
#   docker run --rm chatlog:0.1.0 keys new-master-key --id k1

# The wheel, built from this checkout as a release would be (dev/ and bench/ stay out).
FROM python:3.11.11-slim-bookworm AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && ls /wheels | sed -E 's/^chatlog_memory-([^-]+)-.*/chatlog-memory==\1/' > /wheels/constraints.txt

FROM python:3.11.11-slim-bookworm
COPY --from=wheel /wheels /wheels
# The install the README gives for the processes, from the wheel built above (the
# constraint keeps pip from taking another version of chatlog-memory from an index).
RUN pip install --no-cache-dir --find-links /wheels --constraint /wheels/constraints.txt 'chatlog-memory[all]' \
    && rm -rf /wheels
# No root at run time; a home for faust's data directory (CHATLOG_STATE_DIR).
RUN useradd --create-home --uid 10001 chatlog
USER chatlog
WORKDIR /home/chatlog
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["chatlog"]
CMD ["--help"]
