using Peft.ContractKit;
using Peft.Contract.Tests.Host;

namespace Peft.Contract.Tests;

/// <summary>
/// The matrix catches broken methods: each method of the test plugin tests/TestPlugins/Methods breaks one property
/// on purpose, and the contract reports exactly that property, naming it and the method.
/// </summary>
public class BrokenMethodsTests
{
    [Theory]
    [InlineData("broken-init", ContractProperty.EqualsBaseAtInit)]
    [InlineData("trains-base", ContractProperty.OnlyMethodParametersGetGradients)]
    [InlineData("leaky", ContractProperty.TrainingStepLeaksNoTensor)]
    // Its state dict moves the second adapter onto a fresh model in the independence check, so that breaks too.
    [InlineData("lossy-save", ContractProperty.SaveLoadBitIdentical, ContractProperty.TwoAdaptersIndependent)]
    [InlineData("broken-merge", ContractProperty.MergeMatchesUnmerged)]
    // Independence is observed by disabling one adapter, so that breaks too.
    [InlineData("ignores-disable", ContractProperty.DisabledGivesBase, ContractProperty.TwoAdaptersIndependent)]
    [InlineData("shared-adapters", ContractProperty.TwoAdaptersIndependent)]
    [InlineData("lax-load", ContractProperty.BadAdapterFileRefused)]
    public void The_contract_names_the_property_a_method_breaks(string method, ContractProperty broken, params ContractProperty[] alsoBroken)
    {
        var violations = PeftMethodContract.CheckAll(HostContractHost.For(HostContractHost.TinyLlama), new MethodCase(method, new Dictionary<string, string?>()));

        violations.Select(v => v.Property).Should().Equal([broken, .. alsoBroken],
            $"'{method}' breaks {broken} (and only what depends on it); found: {string.Join(" | ", violations.Select(v => v.Message))}");
        violations[0].Message.Should().StartWith($"contract property {broken} broken by method '{method}': ");
        violations[0].Method.Should().Be(method);
    }

    [Fact]
    public void The_correct_test_method_honours_every_property()
    {
        PeftMethodContract.CheckAll(HostContractHost.For(HostContractHost.TinyLlama), new MethodCase("test-scale", new Dictionary<string, string?>()))
            .Should().BeEmpty();
    }

    [Fact]
    public void A_failing_matrix_test_reports_the_property_in_its_message()
    {
        var act = () => PeftMethodContract.Check(ContractProperty.TrainingStepLeaksNoTensor, HostContractHost.For(HostContractHost.TinyLlama),
            new MethodCase("leaky", new Dictionary<string, string?>()));
        act.Should().Throw<ContractViolation>()
            .Where(v => v.Property == ContractProperty.TrainingStepLeaksNoTensor)
            .WithMessage("contract property TrainingStepLeaksNoTensor broken by method 'leaky': on tiny-llama live TorchSharp tensors after each training step: *");
    }
}
