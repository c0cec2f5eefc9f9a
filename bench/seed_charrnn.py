"""The seed's method, written from its description, as the reference the benchmarks compare against.

One-hot input -> nn.LSTM (2 x 512, dropout 0.5 between layers) -> dropout 0.5 -> linear; Adam 1e-3,
gradient clipping at 5, batch 128 x sequence 100, fp32, hidden state carried between batches (detached).
Sampling: the PyTorch model, one forward per character, softmax, top-k, a numpy draw.

`python bench/seed_charrnn.py train STEPS CORPUS` and `python bench/seed_charrnn.py sample CHARS CORPUS` print
JSON (CORPUS: a UTF-8 text file).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class CharRNN(nn.Module):
    def __init__(self, tokens, n_hidden=512, n_layers=2, drop_prob=0.5):
        super().__init__()
        self.chars = tokens
        self.int2char = dict(enumerate(tokens))
        self.char2int = {ch: i for i, ch in self.int2char.items()}
        self.n_hidden, self.n_layers = n_hidden, n_layers
        self.lstm = nn.LSTM(len(tokens), n_hidden, n_layers, dropout=drop_prob, batch_first=True)
        self.dropout = nn.Dropout(drop_prob)
        self.fc = nn.Linear(n_hidden, len(tokens))

    def forward(self, x, hidden):
        r_output, hidden = self.lstm(x, hidden)
        out = self.dropout(r_output).contiguous().view(-1, self.n_hidden)
        return self.fc(out), hidden

    def init_hidden(self, batch_size):
        weight = next(self.parameters()).data
        return (
            weight.new_zeros(self.n_layers, batch_size, self.n_hidden),
            weight.new_zeros(self.n_layers, batch_size, self.n_hidden),
        )


def one_hot_encode(arr, n_labels):
    one_hot = np.zeros((arr.size, n_labels), dtype=np.float32)
    one_hot[np.arange(one_hot.shape[0]), arr.flatten()] = 1.0
    return one_hot.reshape((*arr.shape, n_labels))


def get_batches(arr, batch_size, seq_length):
    n_batches = len(arr) // (batch_size * seq_length)
    arr = arr[: n_batches * batch_size * seq_length].reshape((batch_size, -1))
    for n in range(0, arr.shape[1], seq_length):
        x = arr[:, n : n + seq_length]
        y = np.zeros_like(x)
        try:
            y[:, :-1], y[:, -1] = x[:, 1:], arr[:, n + seq_length]
        except IndexError:
            y[:, :-1], y[:, -1] = x[:, 1:], arr[:, 0]
        yield x, y


def load_text(corpus: Path):
    text = corpus.read_text(encoding="utf-8")
    chars = tuple(sorted(set(text)))
    char2int = {ch: i for i, ch in enumerate(chars)}
    return chars, np.array([char2int[ch] for ch in text])


def train_speed(steps: int, corpus: Path, batch_size: int = 128, seq_length: int = 100) -> list[float]:
    """chars/s of each training step, the seed's way (on the GPU when there is one)."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chars, encoded = load_text(corpus)
    net = CharRNN(chars).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=0.001)
    criterion = nn.CrossEntropyLoss()
    net.train()
    h = net.init_hidden(batch_size)
    speeds = []
    batches = get_batches(encoded, batch_size, seq_length)
    for _ in range(steps):
        start = time.perf_counter()
        x, y = next(batches)
        inputs = torch.from_numpy(one_hot_encode(x, len(chars))).to(device)
        targets = torch.from_numpy(y).to(device)
        h = tuple(each.data for each in h)
        net.zero_grad()
        output, h = net(inputs, h)
        loss = criterion(output, targets.reshape(batch_size * seq_length).long())
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5)
        opt.step()
        loss.item()  # waits for the GPU
        speeds.append(batch_size * seq_length / (time.perf_counter() - start))
    return speeds


def validation_loss(net, encoded: np.ndarray, n_chars: int, device, batch_size: int = 128) -> float:
    """Mean cross-entropy (nats/char) over `encoded`, read as batch_size streams with the state carried."""
    net.eval()
    h, total, count = net.init_hidden(batch_size), 0.0, 0
    with torch.no_grad():
        for x, y in get_batches(encoded, batch_size, 100):
            inputs = torch.from_numpy(one_hot_encode(x, n_chars)).to(device)
            output, h = net(inputs, h)
            targets = torch.from_numpy(y).to(device).reshape(-1).long()
            total += float(F.cross_entropy(output, targets, reduction="sum"))
            count += targets.numel()
    net.train()
    return total / count


def train_for(seconds: float, every: float, corpus: Path, batch_size: int = 128, seq_length: int = 100):
    """Train the seed's way on the first 90% of the corpus for `seconds` of training; the validation loss on the
    last 10% every `every` seconds. Returns [(seconds of training, validation loss)], from 0 s."""
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chars, encoded = load_text(corpus)
    cut = len(encoded) - len(encoded) // 10
    train, val = encoded[:cut], encoded[cut:]
    net = CharRNN(chars).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=0.001)
    net.train()
    curve = [(0.0, validation_loss(net, val, len(chars), device))]
    trained, next_eval = 0.0, every
    while trained < seconds:
        h = net.init_hidden(batch_size)
        for x, y in get_batches(train, batch_size, seq_length):  # one epoch
            start = time.perf_counter()
            inputs = torch.from_numpy(one_hot_encode(x, len(chars))).to(device)
            targets = torch.from_numpy(y).to(device).reshape(-1).long()
            h = tuple(each.data for each in h)
            net.zero_grad()
            output, h = net(inputs, h)
            F.cross_entropy(output, targets).backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5)
            opt.step()
            trained += time.perf_counter() - start if device.type == "cpu" else _synced(start)
            if trained >= next_eval or trained >= seconds:
                curve.append((trained, validation_loss(net, val, len(chars), device)))
                next_eval += every
            if trained >= seconds:
                break
    return curve


def _synced(start: float) -> float:
    torch.cuda.synchronize()
    return time.perf_counter() - start


def predict(net, char, h, top_k):
    x = torch.from_numpy(one_hot_encode(np.array([[net.char2int[char]]]), len(net.chars)))
    h = tuple(each.data for each in h)
    out, h = net(x, h)
    return net.int2char[pick_top_k(out, top_k)], h


def pick_top_k(logits: torch.Tensor, top_k: int, rng=np.random) -> int:
    """The seed's pick from logits (1, V): softmax, the top k, renormalized, one weighted choice.
    (tests/test_sampling_math.py checks charlstm's sampler against it.)"""
    p = F.softmax(logits, dim=1).data
    p, top_ch = p.topk(top_k)
    top_ch, p = top_ch.numpy().squeeze(), p.numpy().squeeze()
    return int(rng.choice(top_ch, p=p / p.sum()))


def sample(net, size, prime="The", top_k=5):
    net.eval()
    chars = list(prime)
    h = net.init_hidden(1)
    with torch.no_grad():
        for ch in prime:
            char, h = predict(net, ch, h, top_k=top_k)
        chars.append(char)
        for _ in range(size):
            char, h = predict(net, chars[-1], h, top_k=top_k)
            chars.append(char)
    return "".join(chars)


def sample_speed(size: int, corpus: Path) -> float:
    torch.manual_seed(0)
    chars, _ = load_text(corpus)
    net = CharRNN(chars)
    sample(net, 20)  # warm up
    start = time.perf_counter()
    sample(net, size, prime="The", top_k=5)
    return size / (time.perf_counter() - start)


if __name__ == "__main__":
    torch.set_num_threads(int(__import__("os").environ.get("THREADS", torch.get_num_threads())))
    if sys.argv[1] == "train":  # train STEPS CORPUS [BATCH]: a smaller batch only for gpu_check's dry run
        batch = int(sys.argv[4]) if len(sys.argv) > 4 else 128
        print(json.dumps({"chars_per_s": train_speed(int(sys.argv[2]), Path(sys.argv[3]), batch_size=batch)}))
    elif sys.argv[1] == "sample":
        print(json.dumps({"chars_per_s": sample_speed(int(sys.argv[2]), Path(sys.argv[3]))}))
