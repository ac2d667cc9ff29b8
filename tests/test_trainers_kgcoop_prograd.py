"""KgCoOp and ProGrad against their formulas, computed here from CLIP's own entry points: the 77-token
prompts of the official code (``tools.bench.reference_text``), hand-written prompts through
``encode_text``; ProGrad's projection and optimiser step by hand; both trainers through train.py and the
scripts; an official KgCoOp checkpoint evaluated."""
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

import clip
import train
from clip.tiny import build_tiny_clip
from dassl.config import get_cfg_default
from dassl.engine.trainer import TrainerBase
from dassl.optim import build_optimizer
from dassl.utils import load_checkpoint
from tests.helpers import (
    assert_same_values_and_gradients,
    make_pets_world,
    run_main,
    write_dassl_pytorch_checkpoint,
)
from tools.bench import reference_text
from trainers import kgcoop, prograd
from trainers.common import default_trainer_node, freeze_all_but_prompt_learner

REPO = Path(__file__).resolve().parents[1]
CLASSNAMES = ["abyssinian", "great_pyrenees", "pug"]
PETS_KGCOOP = "a photo of a {}, a type of pet."
PETS_PROGRAD = "a type of pet, a photo of a {}."
PETS_PHRASE = "a type of pet, a photo of a"  # 8 words, 9 tokens: the last token stays fixed


@pytest.fixture(scope="module")
def clip_model():
    return build_tiny_clip().float()


@pytest.fixture(scope="module")
def batch():
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return images, torch.tensor([0, 1, 2, 1])


def filled(template):
    """``template`` for every class name, as the official code writes them."""
    return [template.format(name.replace("_", " ")) for name in CLASSNAMES]


def token_embeddings(clip_model, texts):
    tokens = clip.tokenize(texts)
    return clip_model.token_embedding(tokens).float(), tokens.argmax(dim=-1)


def reference_class_text(clip_model, prompt_text, ctx):
    """The official text path: the whole 77-token prompt "<prompt_text> <class>." of every class, ctx in
    positions 1 .. n_ctx, through the whole tower; normalised (C, E)."""
    embeddings, eot = token_embeddings(clip_model, filled(prompt_text + " {}."))
    prompts = torch.cat([embeddings[:, :1], ctx.expand(len(CLASSNAMES), -1, -1),
                         embeddings[:, 1 + ctx.shape[0]:]], dim=1)
    return F.normalize(reference_text(clip_model, [prompts], eot)[0], dim=-1)


def hand_written(clip_model, template):
    with torch.no_grad():
        return F.normalize(clip_model.encode_text(clip.tokenize(filled(template))), dim=-1)


def image_features(clip_model, images):
    with torch.no_grad():
        return F.normalize(clip_model.encode_image(images), dim=-1)


def kgcoop_model(clip_model, **values):
    model = kgcoop.KgCoOpCLIP(default_trainer_node(kgcoop, "COOP", **values), CLASSNAMES, clip_model, "OxfordPets")
    freeze_all_but_prompt_learner(model)
    return model


def prograd_model(clip_model, dataset="OxfordPets", temperature=1.0, **values):
    node = default_trainer_node(prograd, "COOP", **values)
    model = prograd.ProGradCLIP(node, CLASSNAMES, clip_model, dataset, temperature)
    freeze_all_but_prompt_learner(model)
    return model


def moved(model, seed=0):
    """The context moved off its initial value (ProGrad's zero rows too), as after some training."""
    with torch.no_grad():
        ctx = model.prompt_learner.ctx
        ctx += 0.05 * torch.randn(ctx.shape, generator=torch.Generator().manual_seed(seed))
    return model


# --- KgCoOp -----------------------------------------------------------------------------------------------

def test_kgcoop_starts_from_a_photo_of_a_whenever_ctx_init_is_set_and_trains_only_ctx(clip_model, capsys):
    expected = token_embeddings(clip_model, "a photo of a")[0][0, 1:5]
    for ctx_init in ("a photo of a", "a centered satellite photo"):  # any phrase: the official forces its own
        model = kgcoop_model(clip_model, CTX_INIT=ctx_init, N_CTX=16)
        assert torch.equal(model.prompt_learner.ctx.detach(), expected)
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    assert 'starts the context from "a photo of a"' in capsys.readouterr().out
    random = kgcoop_model(clip_model, N_CTX=16).prompt_learner.ctx
    assert random.shape == (16, 64) and 0.01 < random.std() < 0.03
    assert kgcoop.KgCoOpCLIP.trains("prompt_learner.ctx") and not kgcoop.KgCoOpCLIP.trains("prompt_learner.x")


def test_kgcoop_logits_penalty_loss_and_gradient_follow_the_formulas(clip_model, batch):
    images, labels = batch
    model = moved(kgcoop_model(clip_model, CTX_INIT="a photo of a", W=8.0))
    ctx = model.prompt_learner.ctx
    terms, logits = model.training_loss(images, labels)

    text = reference_class_text(clip_model, "a photo of a", ctx)
    expected_logits = clip_model.logit_scale.exp() * image_features(clip_model, images) @ text.t()
    gap = 1 - F.cosine_similarity(text, hand_written(clip_model, PETS_KGCOOP), dim=-1).mean()
    expected_loss = F.cross_entropy(expected_logits, labels) + 8.0 * gap

    assert list(terms) == ["loss"]  # logged as the official: loss (and acc)
    assert gap > 1e-3
    assert torch.allclose(logits, expected_logits, atol=1e-5)
    assert torch.allclose(model(images), expected_logits, atol=1e-5)  # inference: learned prompts only
    assert torch.allclose(kgcoop.knowledge_gap(model.class_text(), model.hand_written(CLASSNAMES)), gap, atol=1e-6)
    assert torch.allclose(terms["loss"], expected_loss, atol=1e-5)
    (grad,) = torch.autograd.grad(terms["loss"], ctx)
    (expected_grad,) = torch.autograd.grad(expected_loss, ctx)
    assert grad.abs().max() > 0 and torch.allclose(grad, expected_grad, atol=1e-5)


# --- ProGrad ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, phrase, n_words, n_tokens", [
    ("OxfordPets", PETS_PHRASE, 8, 9), ("DescribableTextures", "a texture of", 3, 3)])
def test_prograd_init_puts_the_template_in_the_last_slots_and_zeros_before(clip_model, dataset, phrase,
                                                                           n_words, n_tokens):
    model = prograd_model(clip_model, dataset, CTX_INIT="a photo of a")
    ctx = model.prompt_learner.ctx.detach()
    phrase_embeddings = token_embeddings(clip_model, phrase)[0][0, 1:1 + n_words]
    assert ctx.shape == (16, 64)
    assert torch.equal(ctx[: 16 - n_words], torch.zeros(16 - n_words, 64))
    assert torch.equal(ctx[16 - n_words:], phrase_embeddings)
    # The prompt reads "X .. X <phrase> <class>.": what does not fit the slots stays fixed after them.
    prompt = " ".join(["X"] * (16 - n_words) + [phrase])
    embeddings, eot = token_embeddings(clip_model, filled(prompt + " {}."))
    assert torch.equal(model.class_prompts.token_suffix.float(), embeddings[:, 17:])
    assert torch.equal(model.class_prompts.eot, eot)
    assert model.class_prompts.fixed_init_tokens == n_tokens - n_words
    random = prograd_model(clip_model, dataset).prompt_learner.ctx
    assert random.shape == (16, 64) and 0.01 < random.std() < 0.03


def test_prograd_teacher_and_both_losses_follow_the_formulas(clip_model, batch):
    images, labels = batch
    temperature = 2.0  # the T^2 factor shows
    model = moved(prograd_model(clip_model, temperature=temperature, CTX_INIT="a photo of a"))
    terms, logits = model.training_loss(images, labels)

    ctx = model.prompt_learner.ctx
    prompt = " ".join(["X"] * 8 + [PETS_PHRASE])
    scale, features = clip_model.logit_scale.exp(), image_features(clip_model, images)
    expected_logits = scale * features @ reference_class_text(clip_model, prompt, ctx).t()
    teacher = scale * features @ hand_written(clip_model, PETS_PROGRAD).t()
    soft = -(F.softmax(teacher / temperature, -1) * F.log_softmax(expected_logits / temperature, -1)).sum(1)

    assert list(terms) == ["xe_loss", "kl_loss"]
    assert torch.allclose(logits, expected_logits, atol=1e-5)
    assert torch.allclose(model(images), expected_logits, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(scale * features @ model.teacher_text(CLASSNAMES).t(), teacher, atol=1e-5)
    assert torch.allclose(terms["xe_loss"], F.cross_entropy(expected_logits, labels), atol=1e-5)
    assert torch.allclose(terms["kl_loss"], soft.mean() * temperature**2, atol=1e-5)


def test_prograd_teacher_text_is_encoded_in_fp32_in_an_fp16_model():
    """As the official teacher (a separate fp32 CLIP): fp32 features, only then rounded to the run's dtype."""
    fp16_clip = build_tiny_clip()
    model = prograd.ProGradCLIP(default_trainer_node(prograd, "COOP", CTX_INIT="a photo of a"), CLASSNAMES,
                                fp16_clip, "OxfordPets", 1.0)
    teacher = model.teacher_text(CLASSNAMES)
    assert teacher.dtype == torch.float16
    assert torch.equal(teacher, hand_written(build_tiny_clip().float(), PETS_PROGRAD).half())


@pytest.mark.parametrize("name, build, prompt_text", [
    ("KgCoOp", kgcoop_model, "a photo of a"),
    ("ProGrad", prograd_model, " ".join(["X"] * 8 + [PETS_PHRASE]))])
def test_fast_text_path_equals_the_77_token_path(clip_model, name, build, prompt_text):
    model = moved(build(clip_model, CTX_INIT="a photo of a"), seed=3)
    ctx = model.prompt_learner.ctx
    assert_same_values_and_gradients(model.class_text(), reference_class_text(clip_model, prompt_text, ctx), ctx)


def trainer_like(params, lam, lr, scaler=None, weight_decay=0.0):
    """A ProGrad trainer with only what ``update`` uses: registered parameters, Dassl's SGD, the config."""
    trainer = prograd.ProGrad.__new__(prograd.ProGrad)
    TrainerBase.__init__(trainer)
    learner = torch.nn.ParameterDict(params)
    optim_cfg = get_cfg_default().OPTIM  # momentum 0.9, as every recipe here
    optim_cfg.merge_from_list(["NAME", "sgd", "LR", lr, "WEIGHT_DECAY", weight_decay])
    trainer.register_model("prompt_learner", learner, build_optimizer(list(learner.parameters()), optim_cfg))
    trainer.cfg = CN({"LOSS": {"LAMBDA": lam}})
    trainer.scaler = scaler
    return trainer


@pytest.mark.parametrize("general, expected", [
    ([-1.0, 1.0, 0.0], [0.5, 0.5, 0.0]),    # <G_d, G_g> = -1 < 0: G_d - (-1 / 2) G_g
    ([1.0, 1.0, 5.0], [1.0, 0.0, 0.0]),     # >= 0: G_d unchanged
    ([0.0, 0.0, 0.0], [1.0, 0.0, 0.0])])    # no general gradient: G_d unchanged
@pytest.mark.parametrize("scaler", [None, "amp"])
def test_prograd_update_projects_the_domain_gradient_on_a_constructed_pair(general, expected, scaler):
    """Losses linear in the parameter, so G_d = (1, 0, 0) and G_g = ``general`` exactly; SGD with lr 1 from
    zero momentum moves the parameter by -G. A loss scaler (amp) must not change the step."""
    domain = torch.tensor([1.0, 0.0, 0.0])
    start = torch.tensor([0.3, -0.2, 0.1])
    param = torch.nn.Parameter(start.clone())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if scaler else None
    trainer = trainer_like({"w": param}, lam=1.0, lr=1.0, scaler=scaler)
    general = torch.tensor(general)
    trainer.update({"xe_loss": (param * domain).sum(), "kl_loss": (param * general).sum()})
    assert torch.allclose(param.detach(), start - torch.tensor(expected), atol=1e-6)
    assert torch.allclose(prograd.project_gradient(domain, general, 1.0), torch.tensor(expected))
    if general.any() and general @ domain < 0:
        assert torch.allclose(prograd.project_gradient(domain, general, 0.5), domain - 0.5 * (-1 / 2) * general)


def test_prograd_ctx_after_two_sgd_steps_equals_the_hand_computed_ones(clip_model, batch):
    images, labels = batch
    model = moved(prograd_model(clip_model, CTX_INIT="a photo of a"))
    ctx = model.prompt_learner.ctx
    lr, lam, wd = 0.5, 0.8, 5e-4
    trainer = trainer_like({"ctx": ctx}, lam=lam, lr=lr, weight_decay=wd)
    momentum = torch.zeros_like(ctx)
    for step in range(2):
        start = ctx.detach().clone()
        terms, _ = model.training_loss(images[step::2], labels[step::2])
        g_general = torch.autograd.grad(terms["kl_loss"], ctx, retain_graph=True)[0].flatten()
        g_domain = torch.autograd.grad(terms["xe_loss"], ctx, retain_graph=True)[0].flatten()
        dot = g_domain @ g_general
        grad = g_domain - lam * dot / (g_general @ g_general) * g_general if dot < 0 else g_domain
        momentum = 0.9 * momentum + grad.view_as(ctx) + wd * start  # torch's SGD: buffer = d_p the first time
        trainer.update(terms)
        assert torch.allclose(ctx.detach(), start - lr * momentum, atol=1e-6)
        assert not torch.equal(ctx.detach(), start)


def test_prograd_loads_an_official_checkpoint(clip_model):
    model = prograd_model(clip_model, CTX_INIT="a photo of a")
    official = {"ctx": torch.randn(16, 64).half(), "token_prefix": torch.zeros(5, 1, 64).half(),
                "token_suffix": torch.zeros(5, 60, 64).half()}
    model.prompt_learner.load_state_dict(official)
    assert torch.equal(model.prompt_learner.ctx.detach(), official["ctx"].float())
    assert list(model.prompt_learner.state_dict()) == ["ctx"]


# --- Through train.py and the scripts ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_pets_world(tmp_path_factory.mktemp("kgcoop_prograd"))


def argv(world, out, trainer, *extra):
    root, tiny = world
    return ["--root", root / "data", "--seed", 1, "--trainer", trainer,
            "--dataset-config-file", REPO / "configs/datasets/oxford_pets.yaml",
            "--config-file", REPO / f"configs/trainers/{trainer}/vit_b16_ep100_ctxv1.yaml",
            "--output-dir", out, *extra, "MODEL.BACKBONE.NAME", tiny, "INPUT.SIZE", "(32, 32)",
            "OPTIM.MAX_EPOCH", 1, "DATALOADER.NUM_WORKERS", 0, "DATASET.NUM_SHOTS", 2,
            "DATALOADER.TRAIN_X.BATCH_SIZE", 2, "TRAIN.PRINT_FREQ", 1, "DATASET.SUBSAMPLE_CLASSES", "base"]


def result(text):
    """The last evaluation's result lines."""
    return text[text.rindex("=> result"):].splitlines()[1:6]


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """Each trainer trained for one epoch through train.py: its output folder."""
    runs = {}
    for trainer in ("KgCoOp", "ProGrad"):
        out = tmp_path_factory.mktemp(trainer) / "run"
        code = train.main(train.build_parser().parse_args([str(a) for a in argv(world, out, trainer)]))
        sys.stdout.close()  # the run's Logger; its log.txt holds what it printed
        assert code == 0, (out / "log.txt").read_text()[-3000:]
        runs[trainer] = out
    return runs


@pytest.mark.parametrize("trainer, logged", [("KgCoOp", ("loss ",)), ("ProGrad", ("xe_loss ", "kl_loss "))])
def test_trains_end_to_end_through_train_py(trained, trainer, logged):
    out = trained[trainer]
    log = (out / "log.txt").read_text()
    assert "Finish training" in log and "* accuracy:" in log.split("Finish training")[1]
    assert all(term in log for term in logged) and "acc " in log
    checkpoint = load_checkpoint(str(out / "prompt_learner" / "model.pth.tar-1"))
    assert list(checkpoint["state_dict"]) == ["ctx"]


def test_an_official_kgcoop_checkpoint_evaluates_with_the_accuracy_of_its_model(world, trained, tmp_path, capsys):
    """Written as the official code saves it (fp16 ctx, the dead bias_vectors and meta_net, CoOp's class-set
    buffers) with Dassl.pytorch's pickled schedulers; the ctx is the trained run's."""
    out = trained["KgCoOp"]
    ctx = load_checkpoint(str(out / "prompt_learner" / "model.pth.tar-1"))["state_dict"]["ctx"]
    official = OrderedDict([
        ("ctx", ctx.half()), ("bias_vectors", torch.randn(1, 512).half()),
        ("meta_net.linear1.weight", torch.randn(512, 512).half()), ("meta_net.linear1.bias", torch.zeros(512).half()),
        ("token_prefix", torch.zeros(2, 1, 64).half()), ("token_suffix", torch.zeros(2, 72, 64).half())])
    model_dir = tmp_path / "official"
    write_dassl_pytorch_checkpoint(model_dir / "prompt_learner" / "model.pth.tar-1", official, epoch=1)
    code, stdout, err = run_main(capsys, *argv(world, tmp_path / "eval", "KgCoOp", "--eval-only",
                                               "--model-dir", model_dir, "--load-epoch", 1))
    assert code == 0, err
    assert "3 tensors the official code saves but never trains are not loaded (bias_vectors, meta_net.)" in stdout
    assert "token_prefix, token_suffix from the checkpoint are not loaded" in stdout
    assert "* accuracy:" in result(stdout)[2]
    assert result(stdout) == result((out / "log.txt").read_text())  # total, correct, accuracy, error, macro F1


@pytest.mark.parametrize("trainer", ["KgCoOp", "ProGrad"])
def test_the_scripts_pick_the_vit_b16_recipe_by_default(trainer):
    command = (f"source scripts/lib.sh && parse_args 'DATASET SEED' oxford_pets 1 {trainer} && "
               f"find_configs $TRAINER $CFG $DATASET && echo $CFG_FILE")
    result = subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(REPO / f"configs/trainers/{trainer}/vit_b16_ep100_ctxv1.yaml")


@pytest.mark.parametrize("trainer, opts, message", [
    ("ProGrad", ["LOSS.NAME", "prograd_"], "LOSS.NAME is 'prograd_'; the ProGrad trainer runs only 'prograd'"),
    ("ProGrad", ["LOSS.T", 0.0], "LOSS.T is 0.0"),
    ("ProGrad", ["TRAINER.COOP.N_CTX", 4], "TRAINER.COOP.N_CTX is 4; ProGrad starts the context from the 8 words"),
    ("KgCoOp", ["TRAINER.COOP.W", -1.0], "TRAINER.COOP.W is -1.0; KgCoOp's weight must be >= 0")])
def test_config_refusals_are_one_line_before_anything_is_written(world, tmp_path, capsys, trainer, opts, message):
    code, _, err = run_main(capsys, *argv(world, tmp_path / "o", trainer), *opts)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
