"""The pieces of a SentencePiece model file read from its protobuf wire format by hand: an outside
reference for the server's vocabulary entries (Detokenize's return_pieces, /tokenize's
return_token_strs) that shares no code with its SentencePiece reader."""


def sentencepiece_pieces(path):
    """The pieces of a SentencePiece model file, by id: ModelProto's repeated field 1, each a message
    whose field 1 is the piece's text (protobuf wire format, read by hand)."""
    return [text for text, _ in sentencepiece_pieces_and_types(path)]


def sentencepiece_pieces_and_types(path):
    """(text, type) of each piece, by id; the type is the piece's field 3 (NORMAL 1, the default when
    absent; UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6)."""
    def varint(data, i):
        value, shift = 0, 0
        while True:
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value, i

    def fields(data):
        i = 0
        while i < len(data):
            key, i = varint(data, i)
            kind = key & 7
            if kind == 0:
                value, i = varint(data, i)
            elif kind == 1:
                value, i = data[i:i + 8], i + 8
            elif kind == 2:
                n, i = varint(data, i)
                value, i = data[i:i + n], i + n
            elif kind == 5:
                value, i = data[i:i + 4], i + 4
            else:
                raise ValueError("wire type %d" % kind)
            yield key >> 3, value

    with open(path, "rb") as f:
        model = f.read()
    out = []
    for k, piece in fields(model):
        if k == 1:
            values = dict(fields(piece))
            out.append((values[1].decode(), values.get(3, 1)))
    return out
