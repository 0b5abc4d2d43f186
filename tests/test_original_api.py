"""
The original guided-diffusion's public API: every public top-level function and class of its
12 modules, importable from the same module path, and the ones added for that (issue 21)
called the way code written against the original calls them.
"""

import importlib
import os

import pytest
import torch

from guided_diffusion import fp16_util, logger, nn as gd_nn, unet

# Every public top-level function and class (and the two logger aliases) of the original's
# modules, read from openai/guided-diffusion.
ORIGINAL_API = {
    "dist_util": "setup_dist dev load_state_dict sync_params",
    "fp16_util": "convert_module_to_f16 convert_module_to_f32 make_master_params "
    "model_grads_to_master_grads master_params_to_model_params unflatten_master_params "
    "get_param_groups_and_shapes master_params_to_state_dict state_dict_to_master_params "
    "zero_master_grads zero_grad param_grad_or_zeros MixedPrecisionTrainer check_overflow",
    "gaussian_diffusion": "get_named_beta_schedule betas_for_alpha_bar ModelMeanType "
    "ModelVarType LossType GaussianDiffusion",
    "image_datasets": "load_data ImageDataset center_crop_arr random_crop_arr",
    "logger": "KVWriter SeqWriter HumanOutputFormat JSONOutputFormat CSVOutputFormat "
    "TensorBoardOutputFormat make_output_format logkv logkv_mean logkvs dumpkvs getkvs log "
    "debug info warn error set_level set_comm get_dir record_tabular dump_tabular profile_kv "
    "profile get_current Logger get_rank_without_mpi_import mpi_weighted_mean configure reset "
    "scoped_configure",
    "losses": "normal_kl approx_standard_normal_cdf discretized_gaussian_log_likelihood",
    "nn": "SiLU GroupNorm32 conv_nd linear avg_pool_nd update_ema zero_module scale_module "
    "mean_flat normalization timestep_embedding checkpoint CheckpointFunction",
    "resample": "create_named_schedule_sampler ScheduleSampler UniformSampler LossAwareSampler "
    "LossSecondMomentResampler",
    "respace": "space_timesteps SpacedDiffusion",
    "script_util": "NUM_CLASSES diffusion_defaults classifier_defaults "
    "model_and_diffusion_defaults classifier_and_diffusion_defaults create_model_and_diffusion "
    "create_model create_classifier_and_diffusion create_classifier "
    "sr_model_and_diffusion_defaults sr_create_model_and_diffusion sr_create_model "
    "create_gaussian_diffusion add_dict_to_argparser args_to_dict str2bool",
    "train_util": "TrainLoop parse_resume_step_from_filename get_blob_logdir "
    "find_resume_checkpoint find_ema_checkpoint log_loss_dict",
    "unet": "AttentionPool2d TimestepBlock TimestepEmbedSequential Upsample Downsample ResBlock "
    "AttentionBlock count_flops_attn QKVAttentionLegacy QKVAttention UNetModel SuperResModel "
    "EncoderUNetModel",
}


@pytest.mark.parametrize("module", sorted(ORIGINAL_API))
def test_every_original_name_is_importable_from_its_module(module):
    mod = importlib.import_module(f"guided_diffusion.{module}")
    missing = [name for name in ORIGINAL_API[module].split() if not hasattr(mod, name)]
    assert not missing, f"guided_diffusion.{module} lacks {missing}"
    for name in ORIGINAL_API[module].split():
        assert callable(getattr(mod, name)) or name == "NUM_CLASSES", name


def _tiny_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))


@pytest.mark.parametrize("use_fp16", [False, True])
def test_master_params_round_trip_through_a_state_dict(use_fp16):
    model = _tiny_model()
    groups = fp16_util.get_param_groups_and_shapes(model.named_parameters())
    masters = fp16_util.make_master_params(groups) if use_fp16 else list(model.parameters())
    state = fp16_util.master_params_to_state_dict(model, groups, masters, use_fp16)
    assert list(state) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value)
    back = fp16_util.state_dict_to_master_params(model, state, use_fp16)
    assert [tuple(p.shape) for p in back] == [tuple(p.shape) for p in masters]
    assert all(torch.equal(a, b) for a, b in zip(back, masters))
    # the trainer's methods give the same
    trainer = fp16_util.MixedPrecisionTrainer(model=_tiny_model(), use_fp16=use_fp16)
    trainer.model.load_state_dict(state)
    masters = trainer.state_dict_to_master_params(state)
    assert all(
        torch.equal(a, b) for a, b in
        zip(trainer.master_params_to_state_dict(masters).values(), state.values())
    )  # fmt: skip


class _FakeComm:
    """An mpi4py communicator of one rank."""

    rank = 0

    def gather(self, obj):
        return [obj]

    def allgather(self, obj):
        return [obj]


def test_logger_additions(tmp_path):
    assert logger.mpi_weighted_mean(_FakeComm(), {"a": (1.0, 1), "b": (4.0, 3)}) == {
        "a": 1.0,
        "b": 4.0,
    }
    assert logger.get_rank_without_mpi_import() == 0

    @logger.profile("work")
    def work(x):
        return x + 1

    with logger.scoped_configure(dir=str(tmp_path), format_strs=["json"]):
        logger.set_comm(_FakeComm())
        assert logger.get_current().comm is not None
        assert work(1) == 2
        logger.logkv_mean("loss", 2.0)
        row = logger.dumpkvs()
    assert row["loss"] == 2.0 and row["wait_work"] >= 0.0
    assert os.path.exists(tmp_path / "progress.json")


def test_checkpoint_function_gives_the_plain_gradients():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4, requires_grad=True)

    def run(inp):
        return torch.tanh(layer(inp))

    params = list(layer.parameters())
    out = gd_nn.CheckpointFunction.apply(run, 1, x, *params)
    grads = torch.autograd.grad(out.square().sum(), [x, *params])
    expected = torch.autograd.grad(run(x).square().sum(), [x, *params])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("attention", [unet.QKVAttention, unet.QKVAttentionLegacy])
def test_count_flops_attn_counts_both_matrix_products(attention):
    module = attention(n_heads=2)
    module.total_ops = torch.zeros(1, dtype=torch.float64)
    n, heads, ch, tokens = 3, 2, 4, 5
    out = module(torch.randn(n, 3 * heads * ch, tokens))  # (N, H * ch, T)
    unet.count_flops_attn(module, (None,), out)
    assert module.total_ops.item() == 2 * n * tokens**2 * heads * ch
    attention.count_flops(module, (None,), (out,))  # thop's custom_ops entry, as documented
    assert module.total_ops.item() == 4 * n * tokens**2 * heads * ch
